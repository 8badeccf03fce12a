"""kvpanel themes: TOML files mapping onto textual.theme.Theme.

Built-in themes ship as package data in kvpanel/panel/theme_files/ (read through
importlib.resources, so they work from a wheel). User themes are any `*.toml` in
`$KVPANEL_CONFIG_DIR/themes/` or else `${XDG_CONFIG_HOME:-~/.config}/kvpanel/themes/`; a user
theme with a built-in's name replaces it. A broken user file is skipped with a warning.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from textual.color import Color, ColorParseError
from textual.theme import Theme

BUILTIN_THEMES = ("kvpanel-dark", "kvpanel-light", "kvpanel-high-contrast")
DEFAULT_THEME = "kvpanel-dark"
_COLOR_KEYS = (
    "primary",
    "secondary",
    "accent",
    "foreground",
    "background",
    "surface",
    "panel",
    "boost",
    "success",
    "warning",
    "error",
)
_OTHER_KEYS = {"name": str, "dark": bool, "luminosity_spread": float, "text_alpha": float}


class ThemeError(ValueError):
    pass


def _parse_toml(text: str) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10: the subset our theme files use
        return _parse_flat_toml(text)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ThemeError(f"invalid TOML: {e}") from None


def _parse_flat_toml(text: str) -> dict[str, Any]:
    """`key = "str" | true | false | number` lines and `[table]` headers, '#' comments."""
    data: dict[str, Any] = {}
    table = data
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            table = data.setdefault(line[1:-1].strip(), {})
            continue
        key, sep, value = (part.strip() for part in line.partition("="))
        if not sep:
            raise ThemeError(f"line {lineno}: expected key = value")
        key = key.strip('"')
        if value.startswith('"'):
            table[key] = value[1 : value.index('"', 1)]
        elif value.split("#")[0].strip() in ("true", "false"):
            table[key] = value.split("#")[0].strip() == "true"
        else:
            try:
                table[key] = float(value.split("#")[0])
            except ValueError:
                raise ThemeError(f"line {lineno}: cannot parse value {value!r}") from None
    return data


def theme_from_mapping(data: dict[str, Any], source: str = "<theme>") -> Theme:
    """Validate a parsed theme file and build the Theme; ThemeError names the problem."""
    unknown = set(data) - set(_COLOR_KEYS) - set(_OTHER_KEYS) - {"variables"}
    if unknown:
        raise ThemeError(f"{source}: unknown keys {sorted(unknown)}")
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise ThemeError(f"{source}: 'name' (a string) is required")
    if "primary" not in data:
        raise ThemeError(f"{source}: 'primary' is required")
    kwargs: dict[str, Any] = {}
    for key in _COLOR_KEYS:
        if key in data:
            value = data[key]
            try:
                Color.parse(value)
            except (ColorParseError, TypeError):
                raise ThemeError(f"{source}: {key} = {value!r} is not a color") from None
            kwargs[key] = value
    for key, kind in _OTHER_KEYS.items():
        if key in data:
            value = data[key]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind):
                raise ThemeError(f"{source}: {key} must be a {kind.__name__}")
            kwargs[key] = value
    variables = data.get("variables", {})
    if not isinstance(variables, dict):
        raise ThemeError(f"{source}: [variables] must be a table")
    kwargs["variables"] = {str(k): str(v) for k, v in variables.items()}
    return Theme(**kwargs)


def load_theme_text(text: str, source: str = "<theme>") -> Theme:
    return theme_from_mapping(_parse_toml(text), source)


def builtin_themes() -> list[Theme]:
    root = resources.files("kvpanel.panel").joinpath("theme_files")
    return [
        load_theme_text(root.joinpath(f"{name}.toml").read_text("utf-8"), f"{name}.toml")
        for name in BUILTIN_THEMES
    ]


def user_theme_dir() -> Path:
    base = os.environ.get("KVPANEL_CONFIG_DIR")
    if base:
        return Path(base).expanduser() / "themes"
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(xdg) / "kvpanel" / "themes"


def user_themes(directory: Path | None = None) -> tuple[list[Theme], list[str]]:
    """(themes, warnings) from the user's theme directory; missing directory -> nothing."""
    directory = directory or user_theme_dir()
    themes: list[Theme] = []
    warnings: list[str] = []
    if not directory.is_dir():
        return themes, warnings
    for path in sorted(directory.glob("*.toml")):
        try:
            themes.append(load_theme_text(path.read_text("utf-8"), str(path)))
        except (OSError, UnicodeDecodeError, ThemeError) as e:
            warnings.append(f"skipped theme {path.name}: {e}")
    return themes, warnings


def all_themes(directory: Path | None = None) -> tuple[list[Theme], list[str]]:
    """Built-ins first (user files with the same name replace them), then other user themes."""
    themes = {t.name: t for t in builtin_themes()}
    extra, warnings = user_themes(directory)
    for theme in extra:
        themes[theme.name] = theme
    return list(themes.values()), warnings


def next_theme(names: Iterable[str], current: str) -> str:
    order = list(names)
    if current not in order:
        return order[0]
    return order[(order.index(current) + 1) % len(order)]
