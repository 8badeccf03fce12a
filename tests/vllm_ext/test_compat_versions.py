"""kvpanel's OffloadingSpec / manager / worker against vLLM's ABCs: the installed vLLM (0.32 in
CI) and a recorded copy of 0.33.0's (read from its wheel, see docs/vllm-versions.md)."""

from __future__ import annotations

import ast
import inspect
import sys
import types
from pathlib import Path

import pytest

from kvpanel.vllm_ext import compat
from kvpanel.vllm_ext.manager import KvpanelManager
from kvpanel.vllm_ext.spec import KvpanelOffloadingSpec
from kvpanel.vllm_ext.worker import KvpanelWorker

OURS = {
    "OffloadingManager": KvpanelManager,
    "OffloadingWorker": KvpanelWorker,
    "OffloadingSpec": KvpanelOffloadingSpec,
}

# vllm 0.33.0, vllm/v1/kv_offload/base.py (abstract_api() on the wheel's source): the abstract
# methods, and the parameters vLLM may pass to each method kvpanel defines.
VLLM_0_33 = {
    "OffloadingManager": {
        "abstract": ["lookup", "on_new_request", "prepare_load", "prepare_store"],
        "params": {
            "lookup": ["key", "req_context"],
            "get_load_source": ["key", "req_context"],
            "prepare_load": ["keys", "req_context"],
            "touch": ["keys", "req_context"],
            "complete_load": ["keys", "req_context"],
            "prepare_store": ["keys", "req_context"],
            "complete_store": ["keys", "req_context", "success"],
            "on_new_request": ["req_context"],
            "on_request_finished": ["req_context"],
            "take_events": [],
            "on_schedule_end": ["context"],
            "has_pending_work": [],
            "reset_cache": [],
            "on_reset_flushed": [],
            "get_stats": [],
            "config_info": [],
            "shutdown": [],
        },
    },
    "OffloadingWorker": {
        "abstract": ["get_finished", "submit_load", "submit_store", "wait"],
        "params": {
            "submit_store": ["job_id", "src_spec", "dst_spec"],
            "submit_load": ["job_id", "src_spec", "dst_spec", "expedited"],
            "get_finished": [],
            "wait": ["job_ids"],
            "shutdown": [],
        },
    },
    "OffloadingSpec": {
        "abstract": ["get_manager", "get_worker"],
        "params": {"get_manager": [], "get_worker": ["kv_caches"]},
    },
}


def abstract_api(source: str) -> dict[str, dict]:
    """Per ABC in a vLLM ``kv_offload/base.py``: its @abstractmethod names and the parameters
    (without self/cls) of every method it defines."""
    out: dict[str, dict] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef) or node.name not in OURS:
            continue
        abstract, params = [], {}
        for f in node.body:
            if not isinstance(f, ast.FunctionDef):
                continue
            if any(ast.unparse(d).endswith("abstractmethod") for d in f.decorator_list):
                abstract.append(f.name)
            if f.name != "__init__":
                params[f.name] = [a.arg for a in f.args.args[1:] + f.args.kwonlyargs]
        out[node.name] = {"abstract": sorted(abstract), "params": params}
    return out


def installed_api() -> dict[str, dict]:
    import vllm.v1.kv_offload.base as base

    return abstract_api(Path(base.__file__).read_text())


def test_source_reader_agrees_with_the_installed_abcs() -> None:
    # The recorded 0.33 lists come from abstract_api(): it must find what Python enforces.
    import vllm.v1.kv_offload.base as base

    api = installed_api()
    for name in OURS:
        assert api[name]["abstract"] == sorted(getattr(base, name).__abstractmethods__)


@pytest.mark.parametrize("name", sorted(OURS))
def test_concrete_classes_implement_every_abstract_method(name: str) -> None:
    cls = OURS[name]
    assert cls.__abstractmethods__ == frozenset()  # the installed vLLM's ABC
    for method in VLLM_0_33[name]["abstract"]:  # 0.33's, defined by kvpanel itself
        assert method in vars(cls), f"{cls.__name__} lacks {method}, abstract in vLLM 0.33"


@pytest.mark.parametrize("version", ["installed", "0.33"])
@pytest.mark.parametrize("name", sorted(OURS))
def test_overrides_accept_every_argument_vllm_passes(name: str, version: str) -> None:
    cls = OURS[name]
    api = installed_api()[name] if version == "installed" else VLLM_0_33[name]
    for method, params in api["params"].items():
        if method not in vars(cls) or isinstance(inspect.getattr_static(cls, method), property):
            continue  # vLLM's default is used
        sig = inspect.signature(getattr(cls, method))
        sig.bind(None, *[object()] * len(params))  # positionally, as vLLM calls most
        sig.bind(None, **dict.fromkeys(params))  # and by name (submit_load(expedited=...))


def test_server_api_finds_the_0_33_entrypoints(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0.33 moved make_arg_parser from vllm.entrypoints.launchers.cli_args to
    # vllm.entrypoints.common.cli_args; build_app and init_app_state stayed.
    def parser(p):
        return p

    async def init_app_state(*args):
        return None

    def build_app(*args):
        return None

    fakes = {
        "vllm.entrypoints.common.cli_args": {"make_arg_parser": parser},
        "vllm.entrypoints.launchers.app": {"build_app": build_app},
        "vllm.entrypoints.launchers.api_server.app_state": {"init_app_state": init_app_state},
    }
    for name, attrs in fakes.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
    for gone in ("vllm.entrypoints.launchers.cli_args", "vllm.entrypoints.openai.cli_args"):
        monkeypatch.setitem(sys.modules, gone, None)
    assert compat.server_api() == (parser, build_app, init_app_state)


def test_server_api_on_the_installed_vllm() -> None:
    make_arg_parser, build_app, init_app_state = compat.server_api()
    assert all(callable(f) for f in (make_arg_parser, build_app, init_app_state))
