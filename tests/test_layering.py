"""The import direction of ARCHITECTURE §1: the core never imports the service's or the job's dependencies,
and the service and the workers never import each other."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"fastapi", "uvicorn", "starlette", "ray"}


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _violations(folder: str, forbidden: set[str], *, exempt: tuple[str, ...] = ()) -> list[str]:
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        lazy_ok = rel in exempt
        for name in _imports(path, top_level_only=lazy_ok):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{rel} imports {name}")
    return bad


def test_core_never_imports_service_or_job_dependencies() -> None:
    forbidden = HEAVY | {"logitstore.server", "logitstore.workers"}
    assert _violations("logitstore", forbidden, exempt=("logitstore/cli.py",)) == []


def test_server_and_workers_do_not_import_each_other() -> None:
    assert _violations("server", {"logitstore.workers", "ray"}) == []
    assert _violations("workers", {"logitstore.server", "fastapi", "uvicorn", "starlette"}) == []


def test_importing_the_core_and_cli_loads_neither_ray_nor_fastapi() -> None:
    code = (
        "import sys, logitstore, logitstore.cli, logitstore.verify, logitstore.inspect; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'ray', 'fastapi', 'uvicorn', 'torch'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
