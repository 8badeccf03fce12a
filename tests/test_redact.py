"""Printable forms of secret-carrying values: no password, no token."""

from __future__ import annotations

import pytest

from kvpanel.redact import HIDDEN, display_url, redact_argv


@pytest.mark.parametrize(
    "url, shown",
    [
        ("redis://:pw@127.0.0.1:6379/2?ttl=60", "redis://127.0.0.1:6379/2"),
        ("rediss://user:pw@h:1", "rediss://h:1"),
        ("redis+cluster://:pw@[::1]:7000", "redis+cluster://[::1]:7000"),
        ("redis://h:6379", "redis://h:6379"),
        ("redis://:pw@h:notaport", HIDDEN),
        ("pw@nohost", HIDDEN),
    ],
)
def test_display_url(url: str, shown: str) -> None:
    assert display_url(url) == shown
    assert "pw" not in display_url(url)


def test_redact_argv() -> None:
    argv = ["kvpanel", "serve", "m", "--remote-url", "redis://:pw@h:1", "--token", "tok1",
            "--remote-url=redis://:pw@h:2", "--api-key=key1", "--cache-secret", "sec1",
            "--port", "0"]  # fmt: skip
    shown = redact_argv(argv)
    assert shown == ["kvpanel", "serve", "m", "--remote-url", "redis://h:1", "--token", HIDDEN,
                     "--remote-url=redis://h:2", f"--api-key={HIDDEN}", "--cache-secret", HIDDEN,
                     "--port", "0"]  # fmt: skip
    assert argv[4] == "redis://:pw@h:1"  # the argv itself is what the server runs with


def test_settings_and_url_errors_do_not_print_the_password() -> None:
    from kvpanel.cache import remote_format
    from kvpanel.settings import CacheSettings, ConfigError

    with pytest.raises(ConfigError) as e:
        CacheSettings(remote_url="http://:pw@h:1").validated()
    assert "pw" not in str(e.value) and "http://h:1" in str(e.value)
    for bad in ("redis://:pw@h:port", "http://:pw@h:1", "redis://:pw@/x"):
        with pytest.raises(ValueError) as e2:
            remote_format.parse_url(bad)
        assert "pw" not in str(e2.value), str(e2.value)
