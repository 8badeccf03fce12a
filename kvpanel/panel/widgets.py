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
    fmt_bytes,
    fmt_count,
    fmt_pair,
    fmt_pct,
    fmt_seconds,
    fmt_uptime,
    ordered_tiers,
)
from kvpanel.redact import display_url

# (css class, header text); the widths live in the app's CSS.
TIER_COLUMNS = (
    ("name", "tier"),
    ("bar", "occupancy"),
    ("used", "used/capacity"),
    ("pct", "%"),
    ("chunks", "chunks"),
    ("hit", "now"),
    ("hits", "hits"),
    ("ratio", "ratio"),
    ("spark", "hit history"),
    ("evict", "evicted"),
    ("load", "load"),
    ("store", "store"),
    ("health", "health"),
)


class OccupancyBar(Widget):
    """A one-line bar of background-colored cells; red when the tier is unhealthy."""

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
            (" " * full, f"on {color}"), (" " * (width - full), f"on {color} 18%")
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
        for cls, text in TIER_COLUMNS:
            yield Label(text, classes=f"col col-{cls}")


class TierRow(Horizontal):
    """One tier: every column of TIER_COLUMNS."""

    def __init__(self, tier: str) -> None:
        super().__init__(id=f"tier-{tier}", classes="tier-row")
        self.tier = tier

    def compose(self) -> ComposeResult:
        for cls, _ in TIER_COLUMNS:
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
        note = str(t.get("note") or "")
        errors = int(t.get("errors", 0))
        if not healthy:
            health = Content.from_markup("[b $error]✗ $note[/]", note=note or "unhealthy")
        elif errors:
            health = Content.from_markup("[$warning]● $n errors[/]", n=str(errors))
        else:
            health = Content.from_markup("[$success]●[/] $note", note=note or "ok")
        self._set("health", health)


class TierTable(Vertical):
    def compose(self) -> ComposeResult:
        yield TierHeader(classes="tier-header")

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
                yield Label(id="ttft-p90")
                yield Label(id="ttft-p99")
        yield Sparkline([], id="ttft-spark")

    def update_from(self, ttft: dict[str, Any], history: Sequence[float]) -> None:
        value, unit = digits_value(ttft.get("p50"))
        self.query_one(Digits).update(value)
        self.query_one("#ttft-unit", Label).update(f"{unit} p50")
        self.border_subtitle = f"n={ttft.get('count', 0)}"
        self.query_one("#ttft-p90", Label).update(_kv("p90", fmt_seconds(ttft.get("p90")), 4))
        self.query_one("#ttft-p99", Label).update(_kv("p99", fmt_seconds(ttft.get("p99")), 4))
        self.query_one("#ttft-spark", Sparkline).data = list(history)  # empty: a flat floor


class TrafficPanel(Vertical):
    def compose(self) -> ComposeResult:
        for name in ("prompt", "gen", "running", "finished", "gpukv"):
            yield Label(id=f"traffic-{name}")

    def update_from(self, snap: dict[str, Any]) -> None:
        tp, rq = snap.get("throughput", {}), snap.get("requests", {})
        kv = snap.get("gpu_kv", {})

        def put(name: str, text: str | Content) -> None:
            self.query_one(f"#traffic-{name}", Label).update(text)

        put("prompt", _kv("prompt", fmt_count(tp.get("prompt_tps")) + " tok/s", 10))
        put("gen", _kv("generate", fmt_count(tp.get("generation_tps")) + " tok/s", 10))
        waiting = "$warning" if rq.get("waiting") else "$text"
        put(
            "running",
            Content.from_markup(
                "[$text-muted]running[/]   [b $success]$r[/]  [$text-muted]waiting[/] "
                f"[b {waiting}]$n[/]",
                r=str(rq.get("running", 0)).ljust(3),
                n=str(rq.get("waiting", 0)),
            ),
        )
        put("finished", _kv("finished", fmt_count(rq.get("finished", 0)), 10))
        put(
            "gpukv",
            _kv(
                "gpu kv",
                f"{fmt_pct(kv.get('usage'))} · prefix hit {fmt_pct(kv.get('prefix_hit_rate'))}",
                10,
            ),
        )


class EnginePanel(Vertical):
    def compose(self) -> ComposeResult:
        for name in ("model", "engine", "config", "gpu", "host"):
            yield Label(id=f"engine-{name}")

    def update_from(self, snap: dict[str, Any]) -> None:
        model, cfg = snap.get("model", {}), snap.get("config", {})
        name = str(model.get("name", "?"))
        if model.get("demo"):
            text = Content.from_markup("[b reverse $warning] DEMO MODEL [/] $name", name=name)
        else:
            text = Content.from_markup("[b]$name[/]", name=name)
        self.query_one("#engine-model", Label).update(text)
        engine = f"{model.get('engine', '?')} · {model.get('device', '?')}"
        engine += f" · up {fmt_uptime(snap.get('uptime_s'))}"
        self.query_one("#engine-engine", Label).update(_kv("engine", engine))
        parts = [
            f"{cfg.get('chunk_tokens', '?')} tok/chunk",
            f"cpu {fmt_bytes(cfg.get('cpu_bytes'))}",
        ]
        if cfg.get("disk_path"):
            parts.append(f"disk {fmt_bytes(cfg.get('disk_bytes'))} @ {cfg['disk_path']}")
        if cfg.get("remote_url"):
            # The server sends the display form; an older one sent the URL with its password.
            parts.append(f"remote {display_url(str(cfg['remote_url']))}")
        self.query_one("#engine-config", Label).update(_kv("kvpanel", " · ".join(parts)))
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
        self.query_one("#engine-gpu", Label).update(_kv("gpu", gpu))
        host = snap.get("host", {})
        ram = fmt_pair(int(host.get("ram_used_bytes", 0)), int(host.get("ram_total_bytes", 0)))
        host_text = f"{ram} ram · rss {fmt_bytes(host.get('rss_bytes'))}"
        self.query_one("#engine-host", Label).update(_kv("host", host_text))
