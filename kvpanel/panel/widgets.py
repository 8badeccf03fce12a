"""Dashboard widgets. Each takes plain snapshot dicts in `update_from(...)`; none does I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widget import Widget
from textual.widgets import Digits, Label, Sparkline

from kvpanel.panel.fmt import (
    digits_value,
    fmt_count,
    fmt_pair,
    fmt_pct,
    fmt_seconds,
    fmt_size,
    fmt_uptime,
    ordered_tiers,
)
from kvpanel.redact import display_url

# (css class, header text, header below 120 columns where the column is narrower); the
# widths live in the app's CSS.
TIER_COLUMNS = (
    ("name", "tier", "tier"),
    ("bar", "occupancy", "fill"),
    ("used", "used/capacity", "used/capacity"),
    ("pct", "%", "%"),
    ("chunks", "chunks", "chunks"),
    ("hit", "now", "now"),
    ("hits", "hits", "hits"),
    ("ratio", "ratio", "ratio"),
    ("spark", "hit history", "hit history"),
    ("evict", "evicted", "evict"),
    ("load", "load", "load"),
    ("store", "store", "store"),
    ("io", "ld/st GB/s", "ld/st GB/s"),  # below 120 columns: load and store in one column
    ("health", "health", "health"),
)


class OccupancyBar(Widget):
    """A one-line bar: full blocks for the used part, light shade for the rest, so it reads
    without colour (monochrome terminals, screenshots in print); coloured red when unhealthy."""

    FULL, EMPTY = "█", "░"

    DEFAULT_CSS = "OccupancyBar { height: 1; }"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fraction = 0.0
        self.healthy = True

    def set(self, fraction: float, healthy: bool) -> None:
        self.fraction, self.healthy = max(0.0, min(1.0, fraction)), healthy
        self.refresh()

    def render(self) -> Content:
        width = max(1, self.size.width)
        full = round(self.fraction * width)
        if self.fraction > 0 and full == 0:
            full = 1  # a non-empty tier never looks empty
        color = "$primary" if self.healthy else "$error"
        return Content.assemble(
            (self.FULL * full, color), (self.EMPTY * (width - full), f"{color} 40%")
        )


class HitSparkline(Widget):
    """Hit rates on a fixed 0..1 scale, newest right, one cell per interval.

    None (no lookups in that interval) and no history at all draw as blank cells: an idle or new
    tier must not read as a full, 100 % bar.
    """

    DEFAULT_CSS = "HitSparkline { height: 1; }"
    BARS = "▁▂▃▄▅▆▇█"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data: list[float | None] = []

    def set(self, data: Sequence[float | None]) -> None:
        self.data = list(data)
        self.refresh()

    def render(self) -> Content:
        width = max(1, self.size.width)
        recent = self.data[-width:]
        parts: list[tuple[str, str] | str] = [" " * (width - len(recent))]
        for rate in recent:
            if rate is None:
                parts.append(" ")
            else:
                rate = max(0.0, min(1.0, rate))
                bar = self.BARS[min(len(self.BARS) - 1, int(rate * len(self.BARS)))]
                parts.append((bar, "$success" if rate >= 0.5 else "$warning"))
        return Content.assemble(*parts)


class TierHeader(Horizontal):
    def compose(self) -> ComposeResult:
        for cls, text, _ in TIER_COLUMNS:
            yield Label(text, classes=f"col col-{cls}")

    def on_resize(self) -> None:
        """Short headers where the long ones would be cut ("evict", not "evic…")."""
        for cls, text, short in TIER_COLUMNS:
            label = self.query_one(f".col-{cls}", Label)
            label.update(text if label.size.width >= len(text) else short)


class TierRow(Horizontal):
    """One tier: every column of TIER_COLUMNS."""

    def __init__(self, tier: str) -> None:
        super().__init__(id=f"tier-{tier}", classes="tier-row")
        self.tier = tier

    def compose(self) -> ComposeResult:
        for cls, _, _ in TIER_COLUMNS:
            if cls == "bar":
                yield OccupancyBar(classes="col col-bar")
            elif cls == "spark":
                yield HitSparkline(classes="col col-spark")
            else:
                yield Label(classes=f"col col-{cls}")

    def _set(self, cls: str, text: str | Content) -> None:
        self.query_one(f".col-{cls}", Label).update(text)

    def update_from(self, t: dict[str, Any], history: Sequence[float | None]) -> None:
        cap, used = int(t.get("capacity_bytes", 0)), int(t.get("used_bytes", 0))
        frac = used / cap if cap else 0.0
        healthy = bool(t.get("healthy", True))
        self._set("name", Content.from_markup("[b]$name[/]", name=self.tier))
        self.query_one(OccupancyBar).set(frac, healthy)
        self._set("used", fmt_pair(used, cap))
        self._set("pct", fmt_pct(frac))
        self._set("chunks", fmt_count(t.get("chunks", 0)))
        self._set("hit", fmt_pct(t.get("hit_rate")))
        # Cumulative since the tier's last clear (since start when never cleared).
        hits = t.get("hits_since_clear", t.get("hits"))
        self._set("hits", fmt_count(hits))
        ratio = t.get("hit_ratio_since_clear", t.get("hit_ratio"))
        self._set("ratio", fmt_pct(ratio, 1 if ratio is not None and ratio < 0.1 else 0))
        self.query_one(HitSparkline).set(history)
        self._set("evict", fmt_count(t.get("evictions", 0)))
        self._set("load", f"{float(t.get('load_gbps', 0.0)):.2f} GB/s")
        self._set("store", f"{float(t.get('store_gbps', 0.0)):.2f} GB/s")
        self._set(
            "io", f"{float(t.get('load_gbps', 0.0)):.1f}/{float(t.get('store_gbps', 0.0)):.1f}"
        )
        note = str(t.get("note") or "")
        errors = int(t.get("errors", 0))
        if not healthy:
            health = Content.from_markup("[b $error]✗ $note[/]", note=note or "unhealthy")
        elif errors:
            health = Content.from_markup("[$warning]● $n errors[/]", n=str(errors))
        else:
            health = Content.from_markup("[$success]●[/] $note", note=note or "ok")
        self._set("health", health)

    def set_stale(self) -> None:
        """The figures in this row are the last ones received, not live."""
        self._set("health", Content.from_markup("[b $error]✗ stale[/]"))


class TierTable(Vertical):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stale = False

    def compose(self) -> ComposeResult:
        yield TierHeader(classes="tier-header")

    def set_stale(self, stale: bool) -> None:
        """While the server does not answer, every row's health says so (not the last "ok")."""
        self.stale = stale
        self.set_class(stale, "-stale")
        if stale:
            for row in self.query(TierRow):
                row.set_stale()

    async def update_from(
        self, tiers: dict[str, Any], history: Mapping[str, Sequence[float | None]]
    ) -> None:
        names = ordered_tiers(tiers)
        rows = {row.tier: row for row in self.query(TierRow)}
        if list(rows) != names:
            await self.query(TierRow).remove()
            rows = {name: TierRow(name) for name in names}
            await self.mount_all(rows.values())
        for name in names:
            rows[name].update_from(tiers[name], history.get(name, ()))
            if self.stale:
                rows[name].set_stale()
        cleared = [n for n in names if tiers[n].get("cleared_at") is not None]
        legend = "now: last update · hits, ratio: since start"
        self.border_subtitle = legend + (f" ({', '.join(cleared)}: since clear)" if cleared else "")


def _kv(key: str, value: str, width: int = 8) -> Content:
    return Content.from_markup("[$text-muted]$key[/]$value", key=key.ljust(width), value=value)


class TtftPanel(Vertical):
    def compose(self) -> ComposeResult:
        with Horizontal(id="ttft-top"):
            yield Digits("--", id="ttft-digits")
            with Vertical(id="ttft-side"):
                yield Label("ms", id="ttft-unit")
                yield Label(id="ttft-p50")  # below 120 columns, in place of the big digits
                yield Label(id="ttft-p90")
                yield Label(id="ttft-p99")
        yield Sparkline([], id="ttft-spark")

    def update_from(self, ttft: dict[str, Any], history: Sequence[float]) -> None:
        value, unit = digits_value(ttft.get("p50"))
        self.query_one(Digits).update(value)
        self.query_one("#ttft-unit", Label).update(f"{unit} p50")
        self.border_subtitle = f"n={ttft.get('count', 0)}"
        self.query_one("#ttft-p50", Label).update(_kv("p50", fmt_seconds(ttft.get("p50")), 4))
        self.query_one("#ttft-p90", Label).update(_kv("p90", fmt_seconds(ttft.get("p90")), 4))
        self.query_one("#ttft-p99", Label).update(_kv("p99", fmt_seconds(ttft.get("p99")), 4))
        self.query_one("#ttft-spark", Sparkline).data = list(history)  # empty: a flat floor


class TrafficPanel(Vertical):
    def compose(self) -> ComposeResult:
        for name in ("prompt", "gen", "running", "finished", "enginekv"):
            yield Label(id=f"traffic-{name}")

    def update_from(self, snap: dict[str, Any]) -> None:
        tp, rq = snap.get("throughput", {}), snap.get("requests", {})
        kv = snap.get("engine_kv", {})

        def put(name: str, text: str | Content) -> None:
            self.query_one(f"#traffic-{name}", Label).update(text)

        put("prompt", _kv("prompt", fmt_count(tp.get("prompt_tps")) + " tok/s", 9))
        put("gen", _kv("generate", fmt_count(tp.get("generation_tps")) + " tok/s", 9))
        waiting = "$warning" if rq.get("waiting") else "$text"
        put(
            "running",
            Content.from_markup(
                "[$text-muted]running[/]  [b $success]$r[/] [$text-muted]waiting[/] "
                f"[b {waiting}]$n[/]",
                r=str(rq.get("running", 0)).ljust(3),
                n=str(rq.get("waiting", 0)),
            ),
        )
        put("finished", _kv("finished", fmt_count(rq.get("finished", 0)), 9))
        # The engine's own KV cache (the vllm tier): how full, and its prefix-cache hit rate.
        usage, hit = fmt_pct(kv.get("usage")), fmt_pct(kv.get("prefix_hit_rate"))
        put("enginekv", _kv("vllm kv", f"{usage} · hit {hit}", 9))


class EnginePanel(Vertical):
    """Model, engine, kvpanel's config, accelerator and host: short lines, so that at 80
    columns (where this box is ~35 wide) the model name, engine and host fit whole."""

    def compose(self) -> ComposeResult:
        for name in ("model", "engine", "config", "gpu", "host"):
            yield Label(id=f"engine-{name}")

    def update_from(self, snap: dict[str, Any]) -> None:
        model, cfg = snap.get("model", {}), snap.get("config", {})
        name = str(model.get("name", "?"))
        # A local model directory shows by its last part (the whole path is the tooltip and in
        # the status JSON): a path like /root/.cache/kvpanel/models/x would not fit 80 columns.
        shown = name.rstrip("/").rsplit("/", 1)[-1] if name.startswith("/") else name
        if model.get("demo"):
            text = Content.from_markup("[reverse $warning] DEMO MODEL [/] [b]$name[/]", name=shown)
        else:
            text = Content.from_markup("[b]$name[/]", name=shown)
        label = self.query_one("#engine-model", Label)
        label.update(text)
        label.tooltip = name
        engine = f"{model.get('engine', '?')} · {model.get('device', '?')}"
        engine += f" · up {fmt_uptime(snap.get('uptime_s'))}"
        self.query_one("#engine-engine", Label).update(engine)
        parts = [f"cpu {fmt_size(cfg.get('cpu_bytes'))}"]
        if cfg.get("disk_path"):
            parts.append(f"disk {fmt_size(cfg.get('disk_bytes'))} @ {cfg['disk_path']}")
        if cfg.get("remote_url"):
            # The server sends the display form; an older one sent the URL with its password.
            parts.append(f"remote {display_url(str(cfg['remote_url']))}")
        parts.append(f"{cfg.get('chunk_tokens', '?')} tok/chunk")
        self.query_one("#engine-config", Label).update(_kv("tiers", " · ".join(parts), 6))
        gpus = snap.get("gpus") or []
        if gpus:
            g = gpus[0]
            more = f" (+{len(gpus) - 1})" if len(gpus) > 1 else ""
            gpu = (
                f"{fmt_pair(g['mem_used_bytes'], g['mem_total_bytes'])}"
                f" · {float(g.get('util_pct', 0)):.0f}% · {g.get('name', '?')}{more}"
            )
        else:
            gpu = "none"
        self.query_one("#engine-gpu", Label).update(_kv("gpu", gpu, 6))
        host = snap.get("host", {})
        ram = fmt_pair(int(host.get("ram_used_bytes", 0)), int(host.get("ram_total_bytes", 0)))
        host_text = f"{ram} · rss {fmt_size(host.get('rss_bytes'))}"
        self.query_one("#engine-host", Label).update(_kv("ram", host_text, 6))
