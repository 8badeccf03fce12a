import os
import subprocess
import sys

from conftest import REPO_ROOT


def test_cache_imports_neither_vllm_nor_textual() -> None:
    code = (
        "import kvpanel.cache, sys; "
        "assert not any(m.startswith(('vllm','textual')) for m in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, env=env)
