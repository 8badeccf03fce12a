"""Every third-party package kvpanel/ imports is declared in pyproject.toml (a fresh
`pip install kvpanel` must not fail on an import that only worked because vLLM pulled it in)."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
# Imported only next to the package that brings them (vLLM's server and tokenizer stack, torch's
# kernels, textual's rendering): the declared carrier installs them.
COMES_WITH = {
    "fastapi": "vllm",
    "uvicorn": "vllm",
    "transformers": "vllm",
    "tokenizers": "vllm",
    "huggingface-hub": "vllm",
    "numpy": "torch",
    "triton": "torch",
    "rich": "textual",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_top_level_modules() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "kvpanel").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"kvpanel", "__future__"}


def test_every_imported_package_is_declared() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        specs += extra
    declared = {_norm(re.split(r"[<>=!~\[; ]", s, maxsplit=1)[0]) for s in specs}
    dists = packages_distributions()
    missing = {}
    for module in sorted(imported_top_level_modules()):
        owners = {_norm(d) for d in dists.get(module, [module])}
        if owners & declared:
            continue
        carrier = next((COMES_WITH[o] for o in owners if o in COMES_WITH), None)
        if carrier is not None and carrier in declared:
            continue
        missing[module] = sorted(owners)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
