"""``kvpanel serve``: vLLM's engine and OpenAI server in kvpanel's process, with its tiers.

options     - kvpanel's own flags + config files -> ServeOptions (no vLLM import)
logtee      - every byte the engine (and its child processes) writes goes to a pipe we read
auth        - the control-API token (generated, printed once, stored 0600)
control_api - /kvpanel/v1/* routes (status, resize, clear, bench, logs)
stat_logger - vLLM stat logger feeding kvpanel's metrics
server      - builds the engine and the app, runs uvicorn without its signal handlers
main        - the command: fds, signals, JSON lines or the panel, clean shutdown
"""
