from __future__ import annotations

from pathlib import Path

import pytest

from kvpanel.panel.fmt import evicts_estimate, fmt_bytes, parse_size, resize_preview
from kvpanel.panel.themes import (
    BUILTIN_THEMES,
    ThemeError,
    _parse_flat_toml,
    all_themes,
    builtin_themes,
    load_theme_text,
    next_theme,
    user_theme_dir,
)

GiB = 1 << 30


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4G", 4 * GiB),
        ("512M", 512 << 20),
        ("1.5GiB", int(1.5 * GiB)),
        ("2 GB", 2_000_000_000),
        ("1048576", 1 << 20),
        ("0", 0),
        (" 3t ", 3 << 40),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["-1", "abc", "", "4X", "1.5", "G"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_resize_preview_and_evictions() -> None:
    tier = {"capacity_bytes": 4 * GiB, "used_bytes": 4 * GiB, "chunks": 128}
    assert evicts_estimate(tier, 2 * GiB) == 64
    assert resize_preview("cpu", tier, 2 * GiB) == "cpu: 4.00 GiB -> 2.00 GiB, evicts ~64 chunks"
    assert resize_preview("cpu", tier, 8 * GiB).endswith("no evictions")
    assert fmt_bytes(17) == "17 B"


def test_builtin_themes_load() -> None:
    themes = builtin_themes()
    assert [t.name for t in themes] == list(BUILTIN_THEMES)
    assert not themes[1].dark and themes[0].dark


def test_user_themes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVPANEL_CONFIG_DIR", str(tmp_path))
    assert user_theme_dir() == tmp_path / "themes"
    (tmp_path / "themes").mkdir()
    (tmp_path / "themes" / "mine.toml").write_text('name = "mine"\nprimary = "#ff0000"\n')
    (tmp_path / "themes" / "broken.toml").write_text('name = "x"\nprimary = "not-a-color"\n')
    themes, warnings = all_themes()
    assert [t.name for t in themes] == [*BUILTIN_THEMES, "mine"]
    assert len(warnings) == 1 and "broken.toml" in warnings[0]
    assert next_theme([t.name for t in themes], "mine") == "kvpanel-dark"


def test_theme_validation() -> None:
    with pytest.raises(ThemeError, match="unknown keys"):
        load_theme_text('name = "a"\nprimary = "#fff"\nprimery = "#000"\n')
    with pytest.raises(ThemeError, match="primary"):
        load_theme_text('name = "a"\n')


def test_flat_toml_fallback_matches_tomllib() -> None:
    tomllib = pytest.importorskip("tomllib")

    root = Path(__file__).resolve().parents[2] / "kvpanel" / "panel" / "theme_files"
    for path in root.glob("*.toml"):
        text = path.read_text()
        assert _parse_flat_toml(text) == tomllib.loads(text)


async def test_user_theme_is_switchable_live(tmp_path: Path) -> None:
    from .recorded import make_app

    (tmp_path / "solarized.toml").write_text(
        'name = "solarized"\nprimary = "#268bd2"\nbackground = "#002b36"\n'
    )
    app = make_app(theme="solarized", theme_dir=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.theme == "solarized"
        await pilot.press("t")
        assert app.theme == "kvpanel-dark"
