"""The Textual control panel. Everything that imports textual lives in this package, and
nothing outside it imports it at module level: the engine/cache core stays textual-free.

Entry points: kvpanel.panel.cli (attach_main, status_main, run_panel); the app is
kvpanel.panel.app.KvpanelApp; backends are in kvpanel.panel.backend.
"""
