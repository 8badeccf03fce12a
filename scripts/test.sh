#!/usr/bin/env bash
# The test command: installs what is needed, then runs the whole suite on CPU with real vLLM.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE=1 VLLM_CACHE_ROOT="$PWD/.vllm-cache"
python -m pytest -q -ra "$@"
