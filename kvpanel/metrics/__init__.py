"""Metrics: vLLM's stat loggers + kvpanel's tier stats -> one immutable status snapshot."""
