"""Configuration resolution and unit conversions."""

from __future__ import annotations

import pytest

from sbx.sdk import AuthenticationError, ConnectionConfig, InvalidRequestError
from sbx.sdk._config import DEFAULT_API_URL, envd_headers, timeout_minutes


def test_argument_wins_over_environment() -> None:
    env = {"SBX_API_URL": "http://env:1", "SBX_API_KEY": "env-key"}
    config = ConnectionConfig.resolve("http://arg:2/", "arg-key", env=env)
    assert (config.api_url, config.api_key) == ("http://arg:2", "arg-key")


def test_environment_wins_over_default() -> None:
    env = {"SBX_API_URL": "http://env:1", "SBX_API_KEY": "env-key"}
    config = ConnectionConfig.resolve(env=env)
    assert (config.api_url, config.api_key) == ("http://env:1", "env-key")


def test_default_url_and_no_key() -> None:
    config = ConnectionConfig.resolve(env={})
    assert config.api_url == DEFAULT_API_URL == "http://127.0.0.1:3000"
    assert config.api_key is None
    with pytest.raises(AuthenticationError, match="SBX_API_KEY"):
        config.api_headers()


def test_key_is_not_in_repr() -> None:
    assert "secret" not in repr(ConnectionConfig.resolve("http://x", "secret", env={}))


def test_api_headers() -> None:
    assert ConnectionConfig("http://x", "k").api_headers() == {"X-API-Key": "k"}


def test_envd_headers_route_through_the_gateway() -> None:
    assert envd_headers("sbx-1", "tok") == {
        "E2b-Sandbox-Id": "sbx-1", "E2b-Sandbox-Port": "49983", "X-Access-Token": "tok"}
    assert "X-Access-Token" not in envd_headers("sbx-1", None)


@pytest.mark.parametrize(
    ("seconds", "minutes"),
    [(0, 1), (1, 1), (59.5, 1), (60, 1), (61, 2), (300, 5), (301, 6), (28800, 480)],
)
def test_timeout_is_rounded_up_to_minutes(seconds: float, minutes: int) -> None:
    assert timeout_minutes(seconds) == minutes


@pytest.mark.parametrize("seconds", [-1, float("nan"), float("inf"), True])
def test_bad_timeouts_are_refused(seconds: float) -> None:
    with pytest.raises(InvalidRequestError):
        timeout_minutes(seconds)
