#!/usr/bin/env bash
# kvpanel on the lent H200 (see ../../docs/benchmarks.md). The vLLM 0.26.0 bundle parts must be
# in /root/parts already (the device README's steps 1-2); LMCache 0.5.3 is installed from
# .gpu/lmcache-0.5.3 when a run needs it.
#   run_h200.sh check                 kernels benchmark + CUDA kernel tests + e2e correctness
#   run_h200.sh ktests                the CUDA kernel tests alone
#   run_h200.sh kcheck                CUDA kernel tests + kernels benchmark (bf16, one grid size)
#                                     + where a lone 1-chunk call's time goes (kernels_latency.py)
#   run_h200.sh e2e                   the e2e correctness check alone (greedy hits == recompute);
#                                     TP=2 runs it at --tensor-parallel-size 2 (needs 2 GPUs)
#   run_h200.sh compare20b|compare120b
#       MODES=vanilla,native,lmcache,kvpanel (default; any order/subset), TAG=name for outputs,
#       EAGER=1 adds --enforce-eager to every mode (default: CUDA graphs, vLLM's default;
#       do not cap the capture sizes to save start time: batches outside the graphs JIT-compile
#       Triton kernels in the first server's rounds, docs/benchmarks.md "Ninth session"),
#       ENGINE_EXTRA="..." appends vLLM flags to every mode, QUERY_ROUNDS=N runs the query
#       round N times per server start (--query-rounds; default 1, LMCache's benchmark),
#       BENCH_EXTRA="..." appends kvpanel bench flags (e.g. --token-ids),
#       TRACE=1 writes kvpanel's event trace (KVPANEL_TRACE) and prints handoff_trace.py's
#       per-request view of it into NAME.txt (the trace itself goes into the logs' archive);
#       PROBE=1 with it: benchmarks/gpu/probe_site traces vLLM's scheduler in every mode.
#       JIT=1 adds --jit-monitor-verbose (vLLM logs every Triton compile during inference, not
#       only each kernel's first) and copies those lines into NAME.txt: the tenth session's
#       restart rounds had 0.85-1.05 s steps that its trace could not explain.
#   run_h200.sh restart20b
#       The restart benchmark (issue 17) on gpt-oss-20b, same workload and flags as compare20b:
#       each mode's server runs the warm-up round, gets SIGTERM (kvpanel flushes its disk tier),
#       the page cache is dropped, the server starts again with the same arguments on the same
#       tiers and runs the query round (--restart-before-query --drop-page-cache). kvpanel gets
#       a 40 GiB disk tier at DISK_PATH (default /var/tmp/kvpanel-restart-disk; emptied before
#       the run so that the warm-up round is a recompute; refused on tmpfs). MODES defaults to
#       vanilla,native,kvpanel; two engine starts per mode, so run one mode per device call
#       (MODES=kvpanel, then native, then vanilla) to stay inside the 10-minute limit.
#       DROP_PAGE_CACHE=0 keeps the page cache (the "files in the page cache" row).
#   run_h200.sh disk20b
#       What writing the disk tier costs (issue 17: warm-up round within 5 % of no disk tier,
#       nothing dropped, write rate >= 80 % of dd's): 4 parallel O_DIRECT dd writes and reads
#       on DISK_PATH's filesystem, then the compare20b workload with MODES=kvpanel-cpu,kvpanel
#       (default; kvpanel-cpu is kvpanel without the disk tier) and a 40 GiB disk tier, no
#       restart; prints both rounds, the disk tier's dropped chunks and its write rate while
#       writing (tiers.disk.write_bytes_per_s) beside dd's. The first server on a fresh
#       machine pays Triton compiles in its warm-up round: run this after another call, and in
#       both orders (MODES=kvpanel,kvpanel-cpu too). kvpanel writes through the page cache
#       without fsync (disk_tier.py): its rate is how fast the write-behind drains, which on a
#       host with free RAM can exceed what dd's O_DIRECT streams get from the device.
#   run_h200.sh restart120b
#       restart20b on gpt-oss-120b with 8 GiB of GPU KV (compare120b's workload; issue 17's
#       <= 0.7 x row). Not run yet: two 120b starts may not fit one 10-minute call.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/kvpanel-out}
mkdir -p "$OUT"
if [ ! -f /tmp/site/_vllm_bundle/env.sh ]; then
  bash .gpu/p2/install_bundle.sh > "$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
fi
source /tmp/site/_vllm_bundle/env.sh
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
# kvpanel's own C dependencies the device image lacks (xxhash, hiredis) travel as cp312 wheels
# in .gpu/wheels (pip download --only-binary=:all: --python-version 3.12 --platform manylinux...).
if [ -d .gpu/wheels ] && ! python -c "import xxhash" 2>/dev/null; then
  pip install -q --no-index --no-deps --target /tmp/kv_wheels .gpu/wheels/*.whl || exit 1
fi
[ -d /tmp/kv_wheels ] && export PYTHONPATH=/tmp/kv_wheels:$PYTHONPATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python -c "import vllm, torch, triton; print('vllm', vllm.__version__, 'torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"

install_lmcache() {
  if [ ! -d /tmp/lmc_site/lmcache ]; then
    LMC_CHECK=none bash .gpu/lmcache-0.5.3/install_lmc.sh > "$OUT/lmcache-install.log" 2>&1 \
      || { tail -20 "$OUT/lmcache-install.log"; return 1; }
  fi
  export PYTHONPATH=/tmp/lmc_site:$PYTHONPATH
  python -c "import lmcache, importlib.metadata as m; print('lmcache', m.version('lmcache'))" | tee -a "$OUT/device.txt"
}

dd_rate() {  # $1: write|read -> GB/s of 4 parallel 1 GiB O_DIRECT streams; 0 on failure
  local t0 t1 i pids=() bad=0
  t0=$(date +%s.%N)
  for i in 0 1 2 3; do
    if [ "$1" = write ]; then
      dd if=/dev/zero of="$DISK/dd$i" bs=16M count=64 oflag=direct status=none &
    else
      dd if="$DISK/dd$i" of=/dev/null bs=16M iflag=direct status=none &
    fi
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || bad=1; done
  t1=$(date +%s.%N)
  for i in 0 1 2 3; do [ "$(stat -c %s "$DISK/dd$i" 2>/dev/null)" = 1073741824 ] || bad=1; done
  if [ "$bad" = 1 ]; then echo "dd $1 failed on $DISK" >&2; echo 0; return; fi
  python -c "print(f'{4 * 2**30 / ($t1 - $t0) / 1e9:.2f}')"
}

case "${1:-check}" in
  ktests)
    python -m pytest -q -p no:cacheprovider tests/kernels 2>&1 | tee "$OUT/kernel-tests.txt" | tail -4
    grep -q " passed" "$OUT/kernel-tests.txt" && ! grep -q " failed" "$OUT/kernel-tests.txt" || exit 1
    ;;
  kcheck)
    python -m pytest -q -p no:cacheprovider tests/kernels 2>&1 | tee "$OUT/kernel-tests.txt" | tail -4
    grep -q " passed" "$OUT/kernel-tests.txt" && ! grep -q " failed" "$OUT/kernel-tests.txt" || exit 1
    python benchmarks/kernels_bench.py --reps 10 --no-fp8 --programs 64 2>&1 \
      | tee "$OUT/kernels.txt" | tail -45
    # (its text only: a device call returns at most 8 files)
    python benchmarks/kernels_latency.py 2>&1 | tee "$OUT/kernels-latency.txt"
    # The same copies with the slots spread over a 32 GiB pinned CPU tier, as in `serve`
    # (loads inside vLLM ran at 36-42 GB/s against ~51 here; the spread was not the cause:
    # 52-53 GB/s on 2026-11-29, docs/benchmarks.md).
    OUT= python benchmarks/kernels_bench.py --reps 10 --no-fp8 --programs 64 --chunks 8 64 \
      --arena-gb 32 2>&1 | tee "$OUT/kernels-tier.txt" | grep -E "staged|memcpy|correct"
    # Consecutive tier slots, as a request gets them: the staged path's slot runs.
    OUT= python benchmarks/kernels_bench.py --reps 10 --no-fp8 --programs 64 --chunks 1 8 64 \
      --arena-gb 32 --adjacent 2>&1 | tee "$OUT/kernels-adjacent.txt" | grep -E "staged|memcpy|correct"
    ;;
  check|e2e)
    if [ "${1:-check}" = check ]; then
      python benchmarks/kernels_bench.py --reps 10 ${KERNEL_ARGS:-} 2>&1 | tee "$OUT/kernels.txt" | tail -60
      if python -c "import pytest" 2>/dev/null; then
        python -m pytest -q -p no:cacheprovider tests/kernels 2>&1 | tee "$OUT/kernel-tests.txt" | tail -4
      else
        echo "pytest not on the device: CUDA kernel tests not run" | tee "$OUT/kernel-tests.txt"
      fi
    fi
    python benchmarks/gpu/e2e_check.py --tensor-parallel-size "${TP:-1}" > "$OUT/e2e.json" 2> "$OUT/e2e.err"
    python - "$OUT/e2e.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for k in ("cpu_hit", "disk_hit", "check_error"):
    print(k, r.get(k))
for k in ("first", "second"):
    if "error" in r.get(k, {}):
        print(k, "ERROR", r[k]["error"][-1500:])
    else:
        print(k, "tiers", json.dumps(r[k]["rounds"][-1]["tiers"]["cpu"]), json.dumps(r[k]["rounds"][-1]["tiers"]["disk"]))
PY
    ;;
  compare20b|compare120b|restart20b|restart120b|disk20b)
    case "$1" in *120b) M=$GPT_OSS_120B; KV=8589934592 ;; *) M=$GPT_OSS_20B; KV=4294967296 ;; esac
    DISK_ARGS=()
    DISK=
    if [ "${1#restart}" != "$1" ] || [ "$1" = disk20b ]; then
      DISK=${DISK_PATH:-/var/tmp/kvpanel-restart-disk}
      rm -rf "${DISK:?}" && mkdir -p "$DISK" || exit 1
      FS=$(stat -f -c %T "$DISK")
      case "$FS" in tmpfs|ramfs) echo "DISK_PATH $DISK is on $FS (memory), not a disk" >&2; exit 1 ;; esac
      echo "disk tier: $DISK on $FS" | tee -a "$OUT/device.txt"
      df -h "$DISK" | tee -a "$OUT/device.txt"
      DISK_ARGS=(--disk-path "$DISK" --disk-cache-gb 40)
    fi
    if [ "${1#restart}" != "$1" ]; then
      MODES=${MODES:-vanilla,native,kvpanel}
      DISK_ARGS+=(--restart-before-query)
      [ "${DROP_PAGE_CACHE:-1}" = 1 ] && DISK_ARGS+=(--drop-page-cache)
    elif [ "$1" = disk20b ]; then
      MODES=${MODES:-kvpanel-cpu,kvpanel}
      DD_W=$(dd_rate write); DD_R=$(dd_rate read); rm -f "$DISK"/dd?
      echo "dd on $DISK: 4 x 1 GiB O_DIRECT: write $DD_W GB/s, read $DD_R GB/s" | tee -a "$OUT/device.txt"
    fi
    MODES=${MODES:-vanilla,native,lmcache,kvpanel}
    case ",$MODES," in *,lmcache,*) install_lmcache || exit 1 ;; esac
    EXTRA="${ENGINE_EXTRA:-}"
    [ "${EAGER:-0}" = 1 ] && EXTRA="$EXTRA --enforce-eager"
    [ "${JIT:-0}" = 1 ] && EXTRA="$EXTRA --jit-monitor-verbose"
    NAME="$1${TAG:+-$TAG}"
    [ "${TRACE:-0}" = 1 ] && export KVPANEL_TRACE="$OUT/serve-trace-$NAME.log"
    [ "${PROBE:-0}" = 1 ] && export PYTHONPATH="$PWD/benchmarks/gpu/probe_site:$PYTHONPATH"
    python -m kvpanel.cli bench long-doc-qa --compare "$MODES" \
      --model "$M" --num-documents 20 --document-length 20000 --output-len 50 \
      --repeat-count 1 --repeat-mode random --shuffle-seed 0 --max-inflight-requests 20 \
      --completions --cpu-cache-gb 40 --kv-cache-memory "$KV" --query-rounds "${QUERY_ROUNDS:-1}" \
      --engine-args "--load-format dummy --max-model-len 32768 $EXTRA" \
      ${DISK_ARGS[@]+"${DISK_ARGS[@]}"} \
      --no-progress ${BENCH_EXTRA:-} --output "$OUT/$NAME.json" 2>&1 | tee "$OUT/$NAME.txt" | tail -40
    [ -n "$DISK" ] && rm -rf "${DISK:?}"  # up to 40 GiB of the machine's disk
    if [ "$1" = disk20b ]; then
      python benchmarks/gpu/disk_summary.py "$OUT/$NAME.json" "$DD_W" | tee -a "$OUT/$NAME.txt"
    fi
    # Where each mode's start-up went (vLLM's own timing lines).
    grep -hE "took|takes|finished in|KV cache size|Maximum concurrency|pinned" \
      "$OUT"/serve-*.log 2>/dev/null | cut -c1-220 | head -40 \
      | tee -a "$OUT/$NAME.txt"
    if [ "${JIT:-0}" = 1 ]; then
      grep -H "JIT compilation during inference" "$OUT"/serve-*.log 2>/dev/null | cut -c1-260 \
        >> "$OUT/$NAME.txt"
    fi
    if [ -n "${KVPANEL_TRACE:-}" ] && [ -f "$KVPANEL_TRACE" ]; then
      python benchmarks/gpu/handoff_trace.py "$OUT/$NAME.json" "$KVPANEL_TRACE" 2>&1 \
        | tee -a "$OUT/$NAME.txt" | grep -E "==|median|engine steps|slow step"
    fi
    # At most 8 files come back from a device call: plots out, server logs in one archive.
    rm -f "$OUT"/*.png
    (cd "$OUT" && ls serve-*.log >/dev/null 2>&1 && tar czf "serve-logs-$NAME.tgz" serve-*.log && rm -f serve-*.log)
    ls "$OUT"
    ;;
esac
