"""The embedded demo: tiny model configs kvpanel ships, with weights written on first use."""
