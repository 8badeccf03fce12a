"""Device-only diagnostics: kvpanel's vLLM scheduler probe in modes without kvpanel's spec.

With this folder first on ``PYTHONPATH`` and ``KVPANEL_TRACE`` set (``run_h200.sh`` with
``PROBE=1``), every Python process installs the probe of ``kvpanel.vllm_ext.trace`` the moment
it imports vLLM's scheduler module. So native, vanilla and LMCache engines write the same
``sched`` / ``out1`` / ``fin`` events that kvpanel's engines write, and
``benchmarks/gpu/handoff_trace.py`` can put a native handoff beside a kvpanel one. Any other
``sitecustomize`` on the path still runs first.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_TARGET = "vllm.v1.core.sched.scheduler"


def _chain() -> None:
    """Run the sitecustomize this one shadows, as the interpreter would have."""
    for entry in sys.path:
        if os.path.abspath(entry or ".") == _HERE:
            continue
        path = os.path.join(entry or ".", "sitecustomize.py")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                code = compile(f.read(), path, "exec")
            exec(code, {"__name__": "sitecustomize", "__file__": path})
            return


class _ProbeOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
        if fullname != _TARGET:
            return None
        sys.meta_path.remove(self)  # the real spec, from the other finders; once
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):  # type: ignore[no-untyped-def]
            run(module)
            sys.modules[fullname] = module  # the probe imports it back by name
            from kvpanel.vllm_ext import trace

            trace.install_engine_probe()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


_chain()
if os.environ.get("KVPANEL_TRACE"):
    sys.meta_path.insert(0, _ProbeOnImport())
