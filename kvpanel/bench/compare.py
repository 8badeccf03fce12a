"""``--compare vanilla,native,lmcache,kvpanel``: one server per offload mode, the same benchmark.

For each mode: start ``kvpanel serve MODEL --no-ui --port 0 --offload MODE ...``, wait for its
ready line, run the benchmark, SIGTERM it, then the next mode. A mode that fails to start (e.g.
native offloading on vLLM's CPU platform, or lmcache without the lmcache package) is recorded as
failed with its last stderr line. The ``lmcache`` mode (LMCache's own connector) also counts as
failed, numbers kept, unless its server log shows LMCache retrieving KV (bench.lmcache_check).
With ``--restart-before-query`` each server is restarted between the rounds (bench.restart).

    ModeOutcome                     - one mode: ok / error, its BenchResult, the serve argv
    run_modes(params, modes, ...)   - run them in turn (programmatic use)
    comparison_dict(outcomes)       - the JSON document
    print_table(outcomes)           - the table: warm-up / query mean TTFT, query total, ratios,
                                      then each mode's query-round TTFT gain over vanilla
    compare_main(args, params)      - the CLI path; exit 0 when at least one mode ran cleanly
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from kvpanel.bench.compare_table import print_table, summary_rows
from kvpanel.bench.lmcache_check import retrieval_error, scan_log
from kvpanel.bench.long_doc_qa import BenchCancelled, BenchError, BenchParams, run_benchmark
from kvpanel.bench.report import ProgressPrinter, output_paths, write_csv, write_plot
from kvpanel.bench.restart import (
    RestartOptions,
    RestartRecord,
    ServerRestarter,
    print_restart_table,
    restart_summary,
)
from kvpanel.bench.result import BenchResult
from kvpanel.bench.server_proc import (
    OFFLOAD_MODES,
    ServeFailed,
    ServeProcess,
    default_serve_prefix,
    has_disk_tier,
    serve_command,
    serve_env,
)
from kvpanel.redact import redact_argv


@dataclass(slots=True)
class ModeOutcome:
    mode: str
    offload: str
    argv: list[str]
    ok: bool = False
    error: str = ""
    result: BenchResult | None = None
    last_status: dict[str, Any] | None = None
    exit_code: int | None = None
    files: list[str] = field(default_factory=list)
    log_path: str | None = None  # the server's stderr, when kept
    lmcache: dict[str, Any] | None = None  # lmcache mode: what its log says LMCache retrieved
    # Wall seconds of the mode's phases: server start until "ready", both rounds, stop. Where a
    # mode's time goes on a GPU (engine start, pinning the CPU tier, compiling) shows here.
    phases_s: dict[str, float] = field(default_factory=dict)
    restart: RestartRecord | None = None  # --restart-before-query: how the restart went

    def stat(self, round_name: str, attr: str) -> float:
        if self.result is None or round_name not in self.result.rounds:
            return math.nan
        return float(getattr(self.result.rounds[round_name], attr))

    def per_query_round(self, attr: str) -> list[float]:
        """``attr`` of every query round ("query", "query2", ...), in order."""
        rounds = self.result.query_rounds() if self.result else []
        return [float(getattr(r, attr)) for r in rounds]

    def query_rounds_mean(self, attr: str) -> float:
        return self.result.query_rounds_mean(attr) if self.result else math.nan


def parse_modes(text: str) -> list[str]:
    """``"vanilla,native,lmcache,kvpanel"`` -> list; ValueError on unknown or repeated names."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes:
        raise ValueError("--compare needs at least one mode")
    for m in modes:
        if m not in OFFLOAD_MODES:
            known = ", ".join(k for k in OFFLOAD_MODES if k != "none")
            raise ValueError(f"unknown mode {m!r} (known: {known})")
    if len(set(modes)) != len(modes):
        raise ValueError(f"a mode is repeated in {text!r}")
    return modes


def run_modes(
    params: BenchParams,
    modes: Sequence[str],
    build_argv: Callable[[str], list[str]],
    ready_timeout_s: float = 600.0,
    progress_cb: Callable[[str, int, int], None] | None = None,
    log_dir: Path | None = None,
    log: TextIO | None = None,
    restart: RestartOptions | None = None,
) -> list[ModeOutcome]:
    """Each mode in turn: serve, benchmark, stop. Never raises for one mode's failure.

    With ``restart``, each server is stopped after the warm-up round and started again (same
    argv, same tiers) for the query round (kvpanel.bench.restart)."""
    out = log if log is not None else sys.stderr
    outcomes = []
    for mode in modes:
        offload = OFFLOAD_MODES[mode]
        argv = build_argv(mode)
        outcome = ModeOutcome(mode=mode, offload=offload, argv=argv)
        outcomes.append(outcome)
        print(f"[{mode}] starting: {shlex.join(redact_argv(argv))}", file=out, flush=True)
        log_path = _log_path(mode, offload, log_dir)
        outcome.log_path = str(log_path) if log_path else None
        env = serve_env(offload) if offload == "lmcache" else None
        t0 = time.perf_counter()
        try:
            server = ServeProcess.start(argv, ready_timeout_s, log_path, env)
        except ServeFailed as exc:
            outcome.error = f"failed to start: {exc}"
            print(f"[{mode}] {outcome.error}", file=out, flush=True)
            continue
        t1 = time.perf_counter()
        outcome.phases_s["start"] = round(t1 - t0, 1)
        print(f"[{mode}] ready after {t1 - t0:.1f}s", file=out, flush=True)
        restarter = None
        if restart is not None:
            restarter = ServerRestarter(
                server,
                ready_timeout_s,
                restart,
                params.api_key,
                _restarted_log_path(log_path),
                env,
                mode,
                out,
            )
        try:
            assert server.url is not None
            mode_params = params if params.api_key else replace(params, api_key=server.token)
            mode_progress = (
                progress_cb if restarter is None else restarter.watch_progress(progress_cb)
            )
            outcome.result = run_benchmark(
                mode_params, server.url, progress_cb=mode_progress, restart=restarter
            )
            failed = outcome.result.failed_requests
            outcome.ok = failed == 0
            if failed:
                first = next(r.error for r in outcome.result.records if not r.ok)
                outcome.error = f"{failed} requests failed (first: {first})"
        except (BenchError, ValueError) as exc:
            outcome.error = f"benchmark failed: {exc}"
        finally:
            if restarter is not None:  # the server running now is the restarted one
                server = restarter.server
                outcome.restart = restarter.record
            # Status lines come every second: wait for one built after the round ended, or a
            # short query round's hits are missing from the mode's last status.
            outcome.last_status = server.fresh_status() if outcome.result else server.last_status
            t2 = time.perf_counter()
            outcome.exit_code = server.stop()
            outcome.phases_s["bench"] = round(t2 - t1, 1)
            outcome.phases_s["stop"] = round(time.perf_counter() - t2, 1)
        if offload == "lmcache" and outcome.result is not None and log_path is not None:
            _check_lmcache(outcome, log_path, outcome.restart)
            lm = outcome.lmcache or {}
            print(
                f"[{mode}] LMCache retrieved {lm.get('retrieved_tokens', 0)} tokens in "
                f"{lm.get('hit_lines', 0)} of {lm.get('retrieved_lines', 0)} retrievals "
                f"(log: {log_path})",
                file=out,
            )
        state = "ok" if outcome.ok else outcome.error
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in outcome.phases_s.items())
        print(f"[{mode}] done ({state}); server exit code {outcome.exit_code}; {phases}", file=out)
    return outcomes


def _log_path(mode: str, offload: str, log_dir: Path | None) -> Path | None:
    """serve-MODE.log in ``log_dir``; the lmcache mode keeps one even without (its check reads
    it), in the temp dir."""
    if log_dir is not None:
        return log_dir / f"serve-{mode}.log"
    if offload != "lmcache":
        return None
    fd, name = tempfile.mkstemp(prefix=f"kvpanel-serve-{mode}-", suffix=".log")
    os.close(fd)
    return Path(name)


def _restarted_log_path(log_path: Path | None) -> Path | None:
    return None if log_path is None else log_path.with_name(f"{log_path.stem}-restarted.log")


def _check_lmcache(
    outcome: ModeOutcome, log_path: Path, restart: RestartRecord | None = None
) -> None:
    """Fail the mode (numbers kept) unless its log shows LMCache retrieving KV. After a restart
    the restarted server's log is read and nothing retrieved is the finding, not a failure:
    LMCache's CPU backend does not survive its process."""
    if restart is not None:
        if restart.log_path is not None:
            scan = scan_log(Path(restart.log_path))
            outcome.lmcache = {"log": restart.log_path, **scan.to_dict()}
        return
    scan = scan_log(log_path)
    outcome.lmcache = {"log": str(log_path), **scan.to_dict()}
    error = retrieval_error(scan, log_path)
    if error is not None:
        outcome.ok = False
        outcome.error = f"{outcome.error}; {error}" if outcome.error else error


def _json_num(x: float) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else x


def comparison_dict(
    outcomes: Sequence[ModeOutcome], params: BenchParams, model: str
) -> dict[str, Any]:
    rows = summary_rows(outcomes)
    for row, o in zip(rows, outcomes, strict=True):
        for k, v in row.items():
            if isinstance(v, float):
                row[k] = _json_num(v)
            elif isinstance(v, list):
                row[k] = [_json_num(x) for x in v]
        row["command"] = redact_argv(o.argv)  # results are shared: no password or token
        row["server_exit_code"] = o.exit_code
        row["last_status"] = o.last_status
        row["files"] = o.files
        row["server_log"] = o.log_path
        row["phases_s"] = o.phases_s
        if o.offload == "lmcache":
            row["lmcache_retrieval"] = o.lmcache
        if o.restart is not None:
            row["restart"] = _json_tree(restart_summary(o))
        row["result"] = o.result.to_dict() if o.result else None
    return {
        "benchmark": "long_doc_qa_compare",
        "model": model,
        "params": params.public_dict(),
        "restart_before_query": any(o.restart is not None for o in outcomes),
        "modes": rows,
    }


def _json_tree(x: Any) -> Any:
    """NaN and infinity (no JSON) become null, in nested dicts and lists too."""
    if isinstance(x, float):
        return _json_num(x)
    if isinstance(x, dict):
        return {k: _json_tree(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_tree(v) for v in x]
    return x


def mode_argv(args: argparse.Namespace, prefix: Sequence[str], model: str, mode: str) -> list[str]:
    """The serve argv of one ``--compare`` mode (the disk tier goes to ``kvpanel`` only)."""
    disk = has_disk_tier(mode)
    return serve_command(
        prefix,
        model,
        OFFLOAD_MODES[mode],
        engine_args=args.engine_args,
        cpu_cache_gb=args.cpu_cache_gb,
        kv_cache_memory=args.kv_cache_memory,
        num_gpu_blocks_override=args.num_gpu_blocks_override,
        disk_path=args.disk_path if disk else None,
        disk_cache_gb=args.disk_cache_gb if disk else None,
    )


def compare_main(args: argparse.Namespace, params: BenchParams) -> int:
    """The ``--compare`` path of ``bench_main``."""
    try:
        modes = parse_modes(args.compare)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not params.model:
        print("error: --compare needs --model (the model each server loads)", file=sys.stderr)
        return 2
    if args.expected_ttft_gain is not None or args.expected_latency_gain is not None:
        print("note: --expected-*-gain is not checked with --compare", file=sys.stderr)
    prefix = shlex.split(args.serve_command) if args.serve_command else default_serve_prefix()
    model = params.model

    def build_argv(mode: str) -> list[str]:
        return mode_argv(args, prefix, model, mode)

    restart = None
    if args.restart_before_query:
        restart = RestartOptions(args.drop_page_cache, stop_timeout_s=args.stop_timeout)

    json_path = Path(args.output) if args.output else None
    log_dir = json_path.parent if json_path else None
    if log_dir is not None:  # the serve-MODE.log files go there while the modes run
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"error: cannot create {log_dir}: {exc}", file=sys.stderr)
            return 2
    progress = None if args.no_progress else ProgressPrinter()
    try:
        outcomes = run_modes(
            params, modes, build_argv, args.ready_timeout, progress, log_dir, restart=restart
        )
    except (KeyboardInterrupt, BenchCancelled):
        print("interrupted", file=sys.stderr)
        return 130
    print_table(outcomes)
    if restart is not None:
        print_restart_table(outcomes, [restart_summary(o) for o in outcomes])
    if json_path is not None:
        for o in outcomes:
            if o.result is None:
                continue
            mode_json = json_path.with_name(f"{json_path.stem}-{o.mode}.json")
            csv_path, png_path = output_paths(mode_json)
            write_csv(o.result, csv_path)
            o.files = [str(csv_path)]
            if not args.no_plot and write_plot(o.result, png_path):
                o.files.append(str(png_path))
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(comparison_dict(outcomes, params, model), indent=2) + "\n")
    return 0 if any(o.ok for o in outcomes) else 3
