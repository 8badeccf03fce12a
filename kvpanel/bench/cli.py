"""``kvpanel bench long-doc-qa [flags]``: LMCache's long_doc_qa flags, plus kvpanel's.

    bench_main(argv) -> int   - argv is what follows ``kvpanel bench`` (a leading
                                ``long-doc-qa`` is optional)

Exit codes: 0 ok; 1 an --expected-*-gain was missed; 2 bad arguments; 3 the benchmark could
not run or some requests failed; 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from kvpanel.bench.long_doc_qa import BenchCancelled, BenchError, BenchParams, run_benchmark
from kvpanel.bench.prompts import REPEAT_MODES
from kvpanel.bench.report import (
    ProgressPrinter,
    output_paths,
    print_results,
    write_csv,
    write_json,
    write_plot,
)
from kvpanel.bench.result import BenchResult

SUBCOMMAND = "long-doc-qa"
_DEFAULTS = BenchParams()  # the one set of workload defaults (LMCache's)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to a flag's help where a default exists (not None/False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or any(
            action.default is v for v in (None, False, argparse.SUPPRESS)
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


EXIT_OK, EXIT_GAIN_MISSED, EXIT_BAD_ARGS, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"kvpanel bench {SUBCOMMAND}",
        description="Long-document QA benchmark (LMCache's long_doc_qa): warm-up round, then "
        "query round; reports TTFT and round times.",
        formatter_class=DefaultsHelpFormatter,
    )
    w = p.add_argument_group("workload (LMCache's flags)")
    d = _DEFAULTS
    w.add_argument(
        "--num-documents", type=int, default=d.num_documents, help="documents in the workload"
    )
    w.add_argument(
        "--document-length", type=int, default=d.document_length, help="tokens per document"
    )
    w.add_argument(
        "--output-len", type=int, default=d.output_len, help="tokens generated per request"
    )
    w.add_argument(
        "--repeat-count",
        type=int,
        default=d.repeat_count,
        help="times each document is asked about in the query round",
    )
    w.add_argument(
        "--repeat-mode",
        choices=REPEAT_MODES,
        default=d.repeat_mode,
        help="order of the query round's requests",
    )
    w.add_argument(
        "--shuffle-seed", type=int, default=d.shuffle_seed, help="seed of the random order"
    )
    w.add_argument(
        "--max-inflight-requests",
        type=int,
        default=d.max_inflight_requests,
        help="requests in flight at once",
    )
    w.add_argument(
        "--sleep-time-after-warmup",
        type=float,
        default=d.sleep_time_after_warmup,
        metavar="S",
        help="seconds between the warm-up and the query round",
    )
    w.add_argument("--model", default=None, help="model name (default: ask /v1/models)")
    w.add_argument("--port", type=int, default=8000, help="server on http://localhost:PORT")
    w.add_argument("--base-url", default=None, help="server URL (overrides --port)")
    w.add_argument("--completions", action="store_true", help="use /v1/completions, not chat")
    w.add_argument(
        "--hit-miss-ratio",
        default=None,
        metavar="H:M",
        help="force H of every H+M query requests to hit and M to miss (default: all may hit)",
    )
    w.add_argument(
        "--expected-ttft-gain",
        type=float,
        default=None,
        metavar="X",
        help="exit 1 unless the query round's mean TTFT is X times faster than warm-up's",
    )
    w.add_argument(
        "--expected-latency-gain",
        type=float,
        default=None,
        metavar="X",
        help="exit 1 unless the query round is X times faster than warm-up's, end to end",
    )
    w.add_argument(
        "--token-ids",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="send token-id prompts (default: only when the server's /tokenize fails)",
    )
    w.add_argument("--no-prewarm", action="store_true", help="skip the 5 pre-warm requests")
    w.add_argument(
        "--query-rounds",
        type=int,
        default=1,
        metavar="N",
        help="run the query round N times, round k shuffled with seed+k-1 (not in LMCache's "
        "benchmark: more samples per server start; --compare adds the means)",
    )
    w.add_argument(
        "--request-timeout", type=float, default=3600.0, metavar="S", help="seconds per request"
    )
    w.add_argument("--api-key", default=None, help="bearer token for the server")

    o = p.add_argument_group("output")
    o.add_argument("--output", default=None, metavar="FILE.json", help="write results JSON")
    o.add_argument("--csv", default=None, help="per-request CSV (default: FILE.csv)")
    o.add_argument("--plot", default=None, help="TTFT plot PNG (default: FILE.png)")
    o.add_argument("--no-plot", action="store_true", help="write no plot")
    o.add_argument("--visualize", action="store_true", help="write the plot even without --output")
    o.add_argument("--responses-file", default=None, help="write every generated text here")
    o.add_argument("--no-progress", action="store_true", help="print no progress bar")

    c = p.add_argument_group("comparison (start a server per offload mode)")
    c.add_argument(
        "--compare",
        default=None,
        metavar="MODES",
        help="comma-separated, from vanilla (= none), native, lmcache (needs the lmcache "
        "package), kvpanel, kvpanel-cpu (kvpanel without the disk tier of --disk-path, to "
        "see what writing it costs); e.g. vanilla,native,lmcache,kvpanel",
    )
    c.add_argument("--engine-args", default="", help="extra vLLM args for every engine (quoted)")
    c.add_argument(
        "--cpu-cache-gb",
        type=float,
        default=None,
        help="CPU tier size in GiB for native, lmcache and kvpanel (default: each one's own)",
    )
    c.add_argument("--kv-cache-memory", default=None, help="cap GPU KV (--kv-cache-memory-bytes)")
    c.add_argument(
        "--num-gpu-blocks-override",
        type=int,
        default=None,
        help="vLLM's --num-gpu-blocks-override for every engine",
    )
    c.add_argument(
        "--ready-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="seconds to wait for each server to be ready",
    )
    c.add_argument("--serve-command", default=None, help="default: kvpanel serve")
    c.add_argument(
        "--disk-path",
        default=None,
        metavar="DIR",
        help="kvpanel mode only (the others have no disk tier): its disk tier directory",
    )
    c.add_argument(
        "--disk-cache-gb",
        type=float,
        default=None,
        help="kvpanel mode only: disk tier size in GiB (default: kvpanel serve's, 10 GiB)",
    )

    r = p.add_argument_group("restart (with --compare)")
    r.add_argument(
        "--restart-before-query",
        action="store_true",
        help="restart benchmark: after the warm-up round stop each mode's server (SIGTERM and "
        "wait for it to exit; kvpanel flushes its tiers), start it again with the same "
        "arguments on the same tiers (same --disk-path), then run the query round; the report "
        "shows both rounds and the restart/recompute ratios (query round over warm-up round). "
        "Needs --compare, since the bench must start the servers itself: --compare kvpanel "
        "restarts one kvpanel server",
    )
    r.add_argument(
        "--drop-page-cache",
        action="store_true",
        help="with --restart-before-query: while the server is down, sync and drop the OS page "
        "cache (echo 3 > /proc/sys/vm/drop_caches), so the disk tier is read from the device; "
        "needs root; where not permitted the run goes on and the report says NOT dropped",
    )
    r.add_argument(
        "--stop-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="with --restart-before-query: seconds a server may take to flush and exit "
        "before it is killed",
    )
    return p


def check_restart_args(args: argparse.Namespace) -> str | None:
    """The error line for restart/disk flags used where they cannot work, else None."""
    if args.drop_page_cache and not args.restart_before_query:
        return "--drop-page-cache needs --restart-before-query"
    if not args.compare:
        if args.restart_before_query:
            return (
                "--restart-before-query needs --compare: the bench restarts only servers it "
                "started (--compare kvpanel for one kvpanel server)"
            )
        if args.disk_path or args.disk_cache_gb is not None:
            return "--disk-path / --disk-cache-gb set the kvpanel mode's tier: use --compare"
    if args.disk_cache_gb is not None and not args.disk_path:
        return "--disk-cache-gb needs --disk-path"
    if args.stop_timeout <= 0:
        return "--stop-timeout must be > 0"
    return None


def params_from_args(args: argparse.Namespace) -> BenchParams:
    params = BenchParams(
        num_documents=args.num_documents,
        document_length=args.document_length,
        output_len=args.output_len,
        repeat_count=args.repeat_count,
        repeat_mode=args.repeat_mode,
        shuffle_seed=args.shuffle_seed,
        max_inflight_requests=args.max_inflight_requests,
        sleep_time_after_warmup=args.sleep_time_after_warmup,
        model=args.model,
        completions=args.completions,
        hit_miss_ratio=args.hit_miss_ratio,
        token_ids=args.token_ids,
        prewarm=not args.no_prewarm,
        query_rounds=args.query_rounds,
        request_timeout_s=args.request_timeout,
        api_key=args.api_key,
    )
    params.validate()
    return params


def write_outputs(result: BenchResult, args: argparse.Namespace) -> None:
    """JSON / CSV / PNG / responses, as the flags ask."""
    csv_path, png_path = (None, None)
    if args.output:
        write_json(result, args.output)
        csv_path, png_path = output_paths(args.output)
    csv_path = Path(args.csv) if args.csv else csv_path
    png_path = Path(args.plot) if args.plot else png_path
    if png_path is None and args.visualize:
        png_path = Path("long_doc_qa_ttft.png")
    if csv_path is not None:
        write_csv(result, csv_path)
    if png_path is not None and not args.no_plot:
        write_plot(result, png_path)
    if args.responses_file:
        with open(args.responses_file, "w") as f:
            for rec in result.records:
                f.write(f"\nResponse of request {rec.round}/{rec.index}: {rec.text}\n")


def check_gains(result: BenchResult, args: argparse.Namespace) -> int:
    """EXIT_GAIN_MISSED, with one line per missed gain on stderr, or EXIT_OK."""
    rc = EXIT_OK
    checks = (
        ("TTFT", args.expected_ttft_gain, result.ttft_gain),
        ("latency", args.expected_latency_gain, result.latency_gain),
    )
    for name, expected, actual in checks:
        if expected is not None and not actual >= expected:  # NaN misses too
            print(f"ERROR: {name} gain {actual:.2f}× < expected {expected:.2f}×", file=sys.stderr)
            rc = EXIT_GAIN_MISSED
    return rc


def _parse(argv: Sequence[str]) -> argparse.Namespace | int:
    args_list = list(argv)
    if args_list and args_list[0] == SUBCOMMAND:
        args_list = args_list[1:]
    parser = build_parser()
    try:
        return parser.parse_args(args_list)
    except SystemExit as exc:  # --help, or argparse's own error (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_ARGS


def bench_main(argv: Sequence[str] | None = None) -> int:
    parsed = _parse(sys.argv[1:] if argv is None else argv)
    if isinstance(parsed, int):
        return parsed
    args = parsed
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        params = params_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    restart_error = check_restart_args(args)
    if restart_error:
        print(f"error: {restart_error}", file=sys.stderr)
        return EXIT_BAD_ARGS
    if args.compare:
        from kvpanel.bench.compare import compare_main

        return compare_main(args, params)

    base_url = args.base_url or f"http://localhost:{args.port}"
    progress = None if args.no_progress else ProgressPrinter()
    try:
        result = run_benchmark(params, base_url, progress_cb=progress)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (KeyboardInterrupt, BenchCancelled):
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print_results(
        result,
        show_ttft_gain=args.expected_ttft_gain is not None,
        show_latency_gain=args.expected_latency_gain is not None,
    )
    write_outputs(result, args)
    failure = result.failure()
    if failure:
        print(f"ERROR: {failure}", file=sys.stderr)
        return EXIT_FAILED
    return check_gains(result, args)


def main() -> None:
    sys.exit(bench_main())


if __name__ == "__main__":
    main()
