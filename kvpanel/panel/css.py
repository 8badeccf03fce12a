"""The app stylesheet (kept in Python so it needs no package data). Screen.-narrow is < 120
columns: there the hit history, the % column (the bar shows it) and the big TTFT digits give way
so that evictions and load/store (in one column) and whole engine lines fit 80 columns."""

APP_CSS = """
Screen { layout: vertical; background: $background; }
#dashboard { height: 1fr; }

.box {
    border: round $primary 50%;
    border-title-color: $primary;
    border-title-style: bold;
    background: $surface;
    padding: 0 1;
}
#tiers { height: auto; }
.tier-header { height: 1; }
.tier-header .col { color: $text-muted; text-style: bold; }
.tier-row { height: 1; }
.col { height: 1; margin-right: 1; text-wrap: nowrap; text-overflow: ellipsis; }
.col-name { width: 7; }
.col-bar { width: 1fr; min-width: 6; }
.col-used { width: 16; text-align: right; }
.col-pct { width: 4; text-align: right; }
.col-chunks { width: 7; text-align: right; }
.col-hit { width: 4; text-align: right; }
.col-hits { width: 6; text-align: right; }
.col-ratio { width: 5; text-align: right; }
.col-spark { width: 20; }
.col-evict { width: 8; text-align: right; }
.col-load { width: 10; text-align: right; }
.col-store { width: 10; text-align: right; }
.col-io { width: 10; text-align: right; display: none; }
.col-health { width: 1fr; min-width: 12; margin-right: 0; }

#middle { height: 8; }
#ttft { width: 32; height: 100%; }
#ttft-top { height: 3; }
#ttft-digits { width: auto; color: $accent; text-style: bold; margin-right: 1; }
#ttft-side { width: 1fr; }
#ttft-unit { color: $accent; }
#ttft-p50 { display: none; }
#ttft-spark { height: 2; margin-top: 0; }
#ttft-spark > .sparkline--max-color { color: $error; }
#ttft-spark > .sparkline--min-color { color: $success 70%; }
#traffic { width: 38; height: 100%; }
#engine { width: 1fr; height: 100%; }
#middle Label { width: 100%; text-wrap: nowrap; text-overflow: ellipsis; }

#bottom { height: 1fr; min-height: 5; }
#bottom ContentSwitcher { height: 1fr; }
#bottom TabPane { height: 1fr; padding: 0; }
#log { height: 1fr; background: $surface; scrollbar-size-vertical: 1; }
#bench { height: 1fr; padding: 0 1; background: $surface; }
#bench-status { width: 100%; height: 1; }
#bench-progress { height: 1; width: 100%; }
#bench-table { height: 1fr; }

Screen.-narrow .col-spark, Screen.-narrow .col-pct,
Screen.-narrow .col-load, Screen.-narrow .col-store { display: none; }
Screen.-narrow .col-io { display: block; width: 10; }
Screen.-narrow .col-name { width: 6; }
Screen.-narrow .col-used { width: 13; }
Screen.-narrow .col-chunks { width: 6; }
Screen.-narrow .col-hits { width: 5; }
Screen.-narrow .col-ratio { width: 5; }
Screen.-narrow .col-evict { width: 5; }
Screen.-narrow .col-health { min-width: 7; }
Screen.-narrow #ttft-spark, Screen.-narrow #ttft-digits, Screen.-narrow #ttft-unit {
    display: none;
}
Screen.-narrow #ttft-p50 { display: block; }
Screen.-narrow #middle { height: 7; }
Screen.-narrow #ttft { width: 14; }
Screen.-narrow #ttft-top { height: 5; }
Screen.-narrow #traffic { width: 27; }
#tiers.-stale { border: round $error; }
"""
