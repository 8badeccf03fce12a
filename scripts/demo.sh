#!/usr/bin/env bash
# The main job on the embedded default: installs what is needed, then `kvpanel serve` on the
# tiny demo model (CPU, local CPU + disk tiers; kvpanel sizes the demo engine's KV cache itself).
# Extra arguments go to `kvpanel serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec kvpanel serve "$@"
