"""CI form of ``kvpanel bench long-doc-qa --compare kvpanel --restart-before-query`` (vLLM CPU).

The issue's restart test (server A runs the warm-up round, gets SIGTERM and flushes, server B
starts on the same ``--disk-path`` and runs the query round) scaled down to the tiny Llama with
the demo engine's flags: 4 documents x 1100 token ids = 4 full 256-token chunks each. Server B
is a new process: vLLM's prefix cache and kvpanel's CPU tier start empty, so every chunk the
query round reuses must come from the disk tier. Asserted: B's disk hits cover every full chunk
of every document, no write was dropped in either server, A reported its flush, the greedy
answers after the restart equal the recomputed ones, and the page cache was dropped exactly
where this machine permits it (CI runs as root).
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from kvpanel.bench.restart import DROP_CACHES
from kvpanel.demo.engine import DEMO_MAX_MODEL_LEN
from tests.bench.test_compare_e2e import kvpanel
from tests.serve.conftest import tiny_llama  # noqa: F401

pytestmark = pytest.mark.vllm

NUM_DOCS, DOC_LEN, CHUNK = 4, 1100, 256
FULL_CHUNKS = DOC_LEN // CHUNK


def test_restart_before_query_serves_the_query_round_from_disk(tiny_llama, tmp_path):  # noqa: F811
    out = tmp_path / "results" / "restart.json"
    disk = tmp_path / "disk"
    proc = kvpanel(
        "bench",
        "long-doc-qa",
        "--compare",
        "kvpanel",
        "--model",
        tiny_llama,
        "--num-documents",
        str(NUM_DOCS),
        "--document-length",
        str(DOC_LEN),
        "--output-len",
        "4",
        "--repeat-count",
        "1",
        "--max-inflight-requests",
        "2",
        "--completions",
        "--token-ids",
        "--no-progress",
        "--cpu-cache-gb",
        "0.25",
        "--disk-path",
        str(disk),
        "--disk-cache-gb",
        "0.5",
        "--engine-args",
        f"--enforce-eager --max-model-len {DEMO_MAX_MODEL_LEN}",
        "--restart-before-query",
        "--drop-page-cache",
        "--output",
        str(out),
        cwd=tmp_path,
        timeout=600,
    )
    print(proc.stdout)
    print(proc.stderr[-4000:], file=sys.stderr)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = proc.stdout[proc.stdout.index("=== RESTART BEFORE THE QUERY ROUND") :]
    assert "kvpanel" in table and "total q/w" in table

    doc = json.loads(out.read_text())
    assert doc["restart_before_query"] is True
    (m,) = doc["modes"]
    assert m["mode"] == "kvpanel" and m["ok"], m["error"]
    r = m["restart"]
    assert r["exit_code"] == 0 and r["flushed"] is True, r
    assert r["chunks_at_start"] == 0  # the warm-up round was a recompute
    # Server B (a new process) served every full chunk of every document from disk, each
    # once (its pre-warm's 15 disk hits, the first server's pre-warm prompts, are not counted)...
    assert r["query_round_hits"]["disk"] == NUM_DOCS * FULL_CHUNKS, r["query_round_hits"]
    assert m["last_status"]["tiers"]["disk"]["healthy"] is True
    # ...nothing was dropped on the way to disk, before or after the restart...
    assert r["dropped_before_restart"]["disk"] == 0, r["dropped_before_restart"]
    assert r["dropped_after_restart"]["disk"] == 0, r["dropped_after_restart"]
    assert r["status_before_stop"]["uptime_s"] > 0
    # ...and the answers from disk KV equal the recomputed ones (greedy decoding).
    assert r["same_text_as_warmup"] == {"same": NUM_DOCS, "compared": NUM_DOCS}
    records = m["result"]["records"]
    assert all(rec["ok"] and rec["prompt_tokens"] == DOC_LEN for rec in records)
    assert m["result"]["restarted_base_url"] != m["result"]["base_url"]
    for key in ("query_over_warmup_total", "query_over_warmup_ttft"):
        assert isinstance(r[key], float) and r[key] > 0, (key, r[key])
    # Dropped where this machine permits it, and said so where not.
    permitted = os.access(DROP_CACHES, os.W_OK)
    assert r["page_cache"]["requested"] is True
    assert r["page_cache"]["dropped"] is permitted, r["page_cache"]
    if not permitted:
        assert "page cache NOT dropped" in table
    assert os.path.exists(r["log_path"])  # the restarted server's own log
    print(
        f"\nMEASURED warm-up {r['warmup_total_s']:.3f}s / TTFT {r['warmup_mean_ttft_s']:.3f}s, "
        f"query after restart {r['query_total_s']:.3f}s / TTFT {r['query_mean_ttft_s']:.3f}s, "
        f"query-round disk hits {r['query_round_hits']['disk']} (ratios reported, not asserted)"
    )
