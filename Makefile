# One-command entry points. Both create .venv on first use.
#   make test   set up and run the test suite
#   make demo   set up and run the end-to-end demo
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch for local development (CI has this wheel on disk). Real users install
# whatever torch build fits their hardware; pyproject.toml only asks for "torch".
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: test demo venv bench-storage bench-kd lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/logitstore demo

bench-storage: $(STAMP)
	$(PY) bench/storage.py

# distillation quality of every cache method on the demo teacher (~30 min on 2 cores; reuses bench/out/kd_quality)
bench-kd: $(STAMP)
	$(PY) bench/kd_quality.py

lint: $(STAMP)
	$(VENV)/bin/ruff check logitstore server workers tests bench examples
	$(VENV)/bin/mypy logitstore

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
