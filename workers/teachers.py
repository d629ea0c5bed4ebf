"""Teachers: models that turn token ids into next-token (or class) logits, one position chunk at a time.

- :class:`CausalLMTeacher`: any Hugging Face causal LM in a local directory. The base model runs once per batch;
  the LM head is applied to ``chunk`` positions at a time, so the full ``[B, T, V]`` logits never exist.
- :class:`ClassifierTeacher`: a torch module from ``module:factory`` mapping ``input_ids [B, L]`` (and an
  attention mask) to class logits ``[B, C]``; one position per sample.

Device: the first CUDA device when there is one (bf16 weights when the GPU supports it), else the CPU (fp32).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from logitstore.errors import InvalidInputError
from logitstore.workers.config import teacher_kind


def default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


class Teacher(Protocol):
    """What the shard computation needs of a teacher."""

    @property
    def name(self) -> str: ...
    @property
    def revision(self) -> str | None: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def dtype(self) -> str: ...

    def logit_chunks(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, chunk: int
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield ``(t0, t1, logits [B, t1 - t0, V])`` covering every position of ``input_ids [B, T]``."""
        ...


def weights_fingerprint(directory: Path) -> str:
    """sha256 over config.json and the name, size, first and last MiB of every weight file: cheap enough for
    100 GB checkpoints, and changes when the weights are replaced."""
    h = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if path.suffix not in (".json", ".safetensors", ".bin", ".pt", ".pth") or not path.is_file():
            continue
        size = path.stat().st_size
        h.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as f:
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(size - (1 << 20))
                h.update(f.read())
    return h.hexdigest()


class CausalLMTeacher:
    def __init__(self, directory: str | Path, *, device: torch.device | None = None, dtype: torch.dtype | None = None):
        from transformers import AutoConfig, AutoModelForCausalLM

        path = Path(directory)
        if not (path / "config.json").exists():
            raise InvalidInputError(
                f"teacher {str(path)!r} is not a Hugging Face model directory (no config.json); pass a directory "
                "saved with save_pretrained, or a classifier as module:factory"
            )
        self.device = device or default_device()
        torch_dtype = dtype or default_dtype(self.device)
        config = AutoConfig.from_pretrained(path)
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        self.model = model.to(self.device).eval()
        self.name = str(path)
        self.revision = weights_fingerprint(path)
        self.dtype = str(torch_dtype).removeprefix("torch.")
        head = self.model.get_output_embeddings()
        self.vocab_size = int(head.weight.shape[0])
        self.max_positions = describe_max_positions(config.to_dict())
        self._head = head
        self._softcap = getattr(config, "final_logit_softcapping", None)
        self._scale = getattr(config, "logit_scale", None)
        self._divisor = getattr(config, "logits_scaling", None)  # e.g. Granite
        self._check_head(str(getattr(config, "model_type", "?")))

    @torch.inference_mode()
    def _check_head(self, model_type: str) -> None:
        """Refuse a model whose own forward transforms the head's output in a way the chunked path does not
        reproduce: silently storing a different distribution would be worse than failing."""
        probe = (torch.arange(12, device=self.device) % self.vocab_size)[None]
        ref = self.model(input_ids=probe).logits.float()
        ours = torch.cat([c for _, _, c in self.logit_chunks(probe, torch.ones_like(probe), 5)], dim=1).float()
        tol = 1e-2 if self.dtype == "bfloat16" else 1e-4
        err = float((ours - ref).abs().max())
        if err > tol * max(1.0, float(ref.abs().max())):
            raise InvalidInputError(
                f"teacher {self.name} (model_type {model_type!r}): the chunked LM head differs from the model's own "
                f"logits by up to {err:.3g}; its forward post-processes logits in a way logitstore does not know. "
                "Please report the architecture; until then this teacher cannot be cached exactly"
            )

    @torch.inference_mode()
    def logit_chunks(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, chunk: int
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        input_ids = input_ids.to(self.device)
        out = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask.to(self.device))
        hidden = out.last_hidden_state
        t = hidden.shape[1]
        for t0 in range(0, t, chunk):
            t1 = min(t, t0 + chunk)
            logits = self._head(hidden[:, t0:t1])
            if self._scale is not None:  # e.g. Cohere
                logits = logits * self._scale
            if self._divisor is not None:  # e.g. Granite
                logits = logits / self._divisor
            if self._softcap is not None:  # e.g. Gemma 2
                logits = torch.tanh(logits / self._softcap) * self._softcap
            yield t0, t1, logits


def describe_max_positions(config: dict[str, Any]) -> int | None:
    """The model's position limit from its config.json mapping, under whichever name the architecture uses."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = config.get(name)
        if isinstance(value, int) and value > 0:
            return value
    return None


class ClassifierTeacher:
    """A torch classifier from ``package.module:factory``; ``factory()`` returns a module with ``num_classes``."""

    def __init__(self, target: str, *, device: torch.device | None = None):
        module_name, _, attr = target.partition(":")
        if not module_name or not attr:
            raise InvalidInputError(f"a classifier teacher is given as module:factory, got {target!r}")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise InvalidInputError(f"cannot load classifier factory {target!r}: {exc}") from None
        self.device = device or default_device()
        self.model = factory().to(self.device).eval()
        classes = getattr(self.model, "num_classes", None)
        if not isinstance(classes, int) or classes < 1:
            raise InvalidInputError(
                f"the module built by {target!r} needs an integer attribute num_classes (the logit dimension)"
            )
        self.name = target
        self.revision = _state_fingerprint(self.model)
        self.vocab_size = classes
        self.max_positions = getattr(self.model, "max_positions", None)
        self.dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")

    @torch.inference_mode()
    def logit_chunks(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, chunk: int
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        logits = self.model(input_ids.to(self.device), attention_mask=attention_mask.to(self.device))
        yield 0, 1, logits[:, None, :]


def _state_fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def load_teacher(teacher: str, *, device: torch.device | None = None) -> Teacher:
    if teacher_kind(teacher) == "hf":
        return CausalLMTeacher(teacher, device=device)
    return ClassifierTeacher(teacher, device=device)


def read_model_config(directory: Path) -> dict[str, Any]:
    """config.json of a model directory, for checks that must not load the weights."""
    try:
        return json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"cannot read {directory / 'config.json'}: {exc}") from None
