"""kvpanel: tiered KV-cache offloading (CPU, disk) for vLLM, with a live control panel."""

__version__ = "0.1.0"
