"""Where a query round's time goes, request by request: the client's times beside kvpanel's trace.

    python benchmarks/gpu/handoff_trace.py COMPARE.json TRACE.jsonl [--mode kvpanel]

COMPARE.json is a ``kvpanel bench ... --output`` file (its rounds carry ``started_at``);
TRACE.jsonl the server's ``KVPANEL_TRACE`` file (kvpanel/vllm_ext/trace.py). Server and client
ran on one host, so both clocks are ``time.time()``.

Per query round, every request in order of its first token, in ms from the round's start:
``ask`` (its first lookup: it reached the head of vLLM's queue), ``admit`` (load admitted),
``sub`` (load enqueued: host done), ``gpu`` (the load's end event seen done), ``loaded`` (vLLM
told the scheduler), ``pre`` (the scheduler step that gave it its prompt's remaining tokens),
``out1`` (its first token left the scheduler), ``tok`` (first token at the client), ``fin``
(finished in the scheduler), ``end`` (last token at the client).
``prev_end`` is the last client-side end before the admission (without kvpanel's events, as
for vLLM's native offload under ``benchmarks/gpu/probe_site``: before the prefill): for a
request that waited for GPU room, the finish that let it in. Requests are found in the trace
by their API response id (vLLM's request id is it plus suffixes); admissions pair with load
jobs in order (one process, FIFO).

After the requests: the round's engine steps (paired by step number: async scheduling
schedules the next step before this one's output is in) split into time in vLLM's
``schedule()`` (with kvpanel's lookups and store reservations), the model (schedule end ->
its output in) and ``update_from_output``; every step of ``--slow-ms`` or more is listed with
its prefill chunks and the loads and stores kvpanel submitted while it ran.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def load_events(path: Path) -> list[dict]:
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(events, key=lambda e: e["t"])


def round_view(result: dict, name: str, events: list[dict]) -> list[dict] | None:
    stats = result["rounds"][name]
    t0 = stats.get("started_at") or 0.0
    recs = [r for r in result["records"] if r["round"] == name and r["ok"]]
    if not t0 or not all(r.get("response_id") for r in recs):
        return None
    ms = lambda t: None if t is None else round((t - t0) * 1e3, 1)  # noqa: E731
    by_req: dict[str, dict[str, dict]] = {}
    for e in events:
        if "req" in e:
            by_req.setdefault(e["req"], {}).setdefault(e["ev"], e)
    prefills: dict[str, float] = {}
    for e in events:
        if e["ev"] == "sched":
            for req in e["prefill"]:
                prefills[req] = e["t"]  # the last one: after a load, the step that finishes it
            for req in e.get("new") or ():  # first computed (traces before "new": prefill only)
                prefills[req] = e["t"]
    admits = [e for e in events if e["ev"] == "admit"]
    loads = [e for e in events if e["ev"] == "submit" and e["load"]]
    job_of = {id(a): s for a, s in zip(admits, loads, strict=False)}
    done = {e["job"]: e for e in events if e["ev"] == "done"}
    ends = sorted(t0 + r["start_s"] + r["latency_s"] for r in recs)
    rows = []
    for r in sorted(recs, key=lambda r: r["start_s"] + r["ttft_s"]):
        rid = next(
            (k for k in by_req if k == r["response_id"] or k.startswith(r["response_id"] + "-")),
            None,
        )
        evs = by_req.get(rid, {}) if rid else {}
        adm = evs.get("admit")
        sub = job_of.get(id(adm)) if adm else None
        fin = done.get(sub["job"]) if sub else None
        anchor = adm["t"] if adm else prefills.get(rid) if rid else None
        prev = [t for t in ends if anchor is not None and t <= anchor]
        rows.append(
            {
                "ask": ms(evs["ask"]["t"]) if "ask" in evs else None,
                "prev_end": ms(prev[-1]) if prev else None,
                "admit": ms(adm["t"]) if adm else None,
                "chunks": adm["chunks"] if adm else 0,
                "sub": ms(sub["t"]) if sub else None,
                "host_ms": round(sub["host_s"] * 1e3, 2) if sub else None,
                "gpu": ms(fin["t"]) if fin else None,
                "gpu_ms": round(fin["gpu_s"] * 1e3, 2) if fin else None,
                "loaded": ms(evs["loaded"]["t"]) if "loaded" in evs else None,
                "pre": ms(prefills[rid]) if rid in prefills else None,
                "out1": ms(evs["out1"]["t"]) if "out1" in evs else None,
                "tok": round((r["start_s"] + r["ttft_s"]) * 1e3, 1),
                "fin": ms(evs["fin"]["t"]) if "fin" in evs else None,
                "end": round((r["start_s"] + r["latency_s"]) * 1e3, 1),
            }
        )
    steps = [e["t"] for e in events if e["ev"] == "step" and t0 <= e["t"] <= t0 + stats["total_s"]]
    step_s = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    if step_s:
        rows.append(
            {"steps": len(steps), "step_ms_median": round(statistics.median(step_s) * 1e3, 2)}
        )
    return rows


def step_view(events: list[dict], t0: float, t1: float, slow_ms: float) -> tuple[dict, list[dict]]:
    """The round's engine steps from the probe's ``sched`` and ``upd`` events, paired by
    process and step number (with async scheduling, vLLM's default, the next step is
    scheduled before this one's output is in): totals of scheduling (``schedule()``), model
    (from the later of its schedule end and the previous step's output, to its own output)
    and update (``update_from_output()``) time, and every step of ``slow_ms`` or more with
    what it carried: its prefill chunks, and the loads and stores kvpanel's worker submitted
    between its scheduling and its output (a TP engine's ranks each submit their own)."""
    in_round = [e for e in events if t0 <= e["t"] <= t1]
    totals = {"steps": 0, "sched_ms": 0.0, "model_ms": 0.0, "update_ms": 0.0}
    slow: list[dict] = []
    open_steps: dict[tuple, tuple[dict, list[dict]]] = {}
    last_out: dict = {}  # pid -> when its previous step's output was in
    for e in in_round:
        if e["ev"] == "sched" and e.get("step") is not None:
            open_steps[(e.get("pid"), e["step"])] = (e, [])
        elif e["ev"] == "submit":
            for _, jobs in open_steps.values():
                jobs.append(e)
        elif e["ev"] == "upd" and (e.get("pid"), e.get("step")) in open_steps:
            sched, jobs = open_steps.pop((e.get("pid"), e["step"]))
            sched_ms = sched["s"] * 1e3
            # Steps run in order on the GPU: a step scheduled ahead (async) starts its model
            # time once the previous step's output is in, not while it waits behind it.
            began = max(sched["t"], last_out.get(e.get("pid"), 0.0))
            model_ms = (e["t"] - e["s"] - began) * 1e3
            last_out[e.get("pid")] = e["t"]
            update_ms = e["s"] * 1e3
            totals["steps"] += 1
            totals["sched_ms"] += sched_ms
            totals["model_ms"] += model_ms
            totals["update_ms"] += update_ms
            if sched_ms + model_ms + update_ms >= slow_ms:
                slow.append(
                    {
                        "at": round((sched["t"] - sched["s"] - t0) * 1e3, 1),
                        "step": sched["step"],
                        "sched_ms": round(sched_ms, 1),
                        "model_ms": round(model_ms, 1),
                        "update_ms": round(update_ms, 1),
                        "n": sched["n"],
                        "prefill": sorted(sched["prefill"].values(), reverse=True),
                        "loads_mb": [round(j["bytes"] / 1e6) for j in jobs if j["load"]],
                        "stores_mb": [round(j["bytes"] / 1e6) for j in jobs if not j["load"]],
                    }
                )
    return {k: round(v, 1) for k, v in totals.items()}, slow


def gaps(rows: list[dict]) -> dict[str, float]:
    """Median ms between the stages, over requests that have both ends."""
    pairs = [
        ("prev_end", "admit"),
        ("prev_end", "pre"),
        ("ask", "admit"),
        ("admit", "sub"),
        ("sub", "gpu"),
        ("gpu", "loaded"),
        ("loaded", "pre"),
        ("pre", "out1"),
        ("out1", "tok"),
        ("loaded", "tok"),
        ("prev_end", "tok"),
        ("tok", "end"),
        ("fin", "end"),
    ]
    out = {}
    for a, b in pairs:
        d = [r[b] - r[a] for r in rows if r.get(a) is not None and r.get(b) is not None]
        if d:
            out[f"{a}->{b}"] = round(statistics.median(d), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("compare_json", type=Path)
    ap.add_argument("trace", type=Path)
    ap.add_argument("--mode", default=None, help="one mode of the file (default: each)")
    ap.add_argument(
        "--slow-ms", type=float, default=150.0, help="list engine steps at least this long"
    )
    args = ap.parse_args()
    doc = json.loads(args.compare_json.read_text())
    events = load_events(args.trace)
    for mode in doc["modes"]:
        if mode.get("result") is None or args.mode not in (None, mode["mode"]):
            continue
        result = mode["result"]
        for name in [n for n in result["rounds"] if n.startswith("query")]:
            rows = round_view(result, name, events)
            if rows is None:
                print(f"{mode['mode']} {name}: no round start or response ids (an older run)")
                continue
            print(f"== {mode['mode']} {name}")
            for r in rows:
                print("  " + "  ".join(f"{k}={v}" for k, v in r.items()))
            print("  median gaps (ms):", json.dumps(gaps([r for r in rows if "tok" in r])))
            t0 = result["rounds"][name].get("started_at") or 0.0
            t1 = t0 + result["rounds"][name]["total_s"]
            totals, slow = step_view(events, t0, t1, args.slow_ms)
            if totals["steps"]:  # traces from before the probe timed its calls have none
                print("  engine steps (ms):", json.dumps(totals))
                for row in slow:
                    print("  slow step: " + "  ".join(f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
