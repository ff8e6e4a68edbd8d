"""Secrets stay out of log lines and off screens: masked URLs, redacted lines, no locals."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from vclvirt.config.secrets import known_secrets, masked_url, url_password
from vclvirt.config.settings import Settings
from vclvirt.workers import logging as vclvirt_logging

TOKEN = "unit-token-" + "q" * 30
BROKER_PASSWORD = "unit-broker-p@ss/word"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw123456@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://user:pw123456@redis:6379/1", "redis://user:***@redis:6379/1"),
        ("rediss://:p%40ss%2Fx@[::1]:6380/0", "rediss://:***@[::1]:6380/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://redis/0", "redis://redis/0"),
    ],
)
def test_masked_url_hides_only_the_password(url, shown):
    """The password becomes ***; user, host, port and database stay readable."""
    assert masked_url(url) == shown


def test_masked_url_of_an_unparseable_url_shows_nothing():
    """A URL that cannot be parsed is not echoed (it might be all password)."""
    assert masked_url("redis://:pw@[bad") == "(unparseable URL)"


def test_known_secrets_cover_token_broker_and_flower():
    """The token, the broker password (as written and decoded) and Flower's password."""
    settings = Settings(
        api_token=TOKEN,
        broker_url="redis://:unit-broker-p%40ss%2Fword@h:1/0",
        result_backend="redis://:backend-pw-99@h:1/2",
    )
    environ = {"FLOWER_BASIC_AUTH": "ops:flower-pw-1,ro:flower-pw-2", "FLOWER_PASSWORD": "fpw-3"}
    secrets = set(known_secrets(settings, environ))
    assert {TOKEN, BROKER_PASSWORD, "unit-broker-p%40ss%2Fword", "backend-pw-99"} <= secrets
    assert {"flower-pw-1", "flower-pw-2", "fpw-3"} <= secrets
    assert url_password("redis://h:1/0") is None


@pytest.fixture
def log_stream(monkeypatch) -> io.StringIO:
    stream = io.StringIO()
    monkeypatch.setenv("VCLVIRT_API_TOKEN", TOKEN)
    monkeypatch.setenv("VCLVIRT_BROKER_URL", "redis://:unit-broker-p%40ss%2Fword@127.0.0.1:1/0")
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "ops:unit-flower-pw")
    from vclvirt.config.settings import get_settings

    get_settings.cache_clear()
    vclvirt_logging.configure_logging(json=True, stream=stream)
    yield stream
    get_settings.cache_clear()
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def _fail_with_secrets_in_locals() -> None:
    headers = {"authorization": f"Bearer {TOKEN}"}  # noqa: F841 - the local under test
    broker = "redis://:unit-broker-p%40ss%2Fword@127.0.0.1:1/0"  # noqa: F841
    raise RuntimeError("broker down")


def test_tracebacks_carry_no_frame_locals(log_stream):
    """An exception logged with its traceback: frames yes, their locals (headers...) no."""
    try:
        _fail_with_secrets_in_locals()
    except RuntimeError:
        structlog.get_logger("test").exception("request_failed")
    line = json.loads(log_stream.getvalue().splitlines()[-1])
    frames = line["exception"][0]["frames"]
    assert any(f["name"] == "_fail_with_secrets_in_locals" for f in frames)
    assert all("locals" not in frame for frame in frames)
    assert TOKEN not in log_stream.getvalue() and "p%40ss" not in log_stream.getvalue()


def test_secrets_in_any_line_are_redacted(log_stream):
    """Our events, stdlib records and exception messages holding a secret show *** instead."""
    structlog.get_logger("test").info("oops", header=f"Bearer {TOKEN}")
    logging.getLogger("kombu").warning("cannot connect to redis://:%s@h", BROKER_PASSWORD)
    logging.getLogger("flower").error("auth is ops:unit-flower-pw")
    try:
        raise ValueError(f"token {TOKEN} refused")
    except ValueError:
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    text = log_stream.getvalue()
    for secret in (TOKEN, BROKER_PASSWORD, "unit-flower-pw"):
        assert secret not in text
    assert text.count("***") >= 4


def test_secrets_learnt_later_are_redacted_too(log_stream):
    """A secret registered after logging was configured (the API's token) is redacted."""
    vclvirt_logging.register_secrets("late-secret-value-123")
    structlog.get_logger("test").info("late", value="late-secret-value-123")
    assert "late-secret-value-123" not in log_stream.getvalue()


def test_console_rendering_redacts_as_well(monkeypatch):
    """The CLI's human-readable stderr logging goes through the same redaction."""
    stream = io.StringIO()
    monkeypatch.setenv("VCLVIRT_API_TOKEN", TOKEN)
    from vclvirt.config.settings import get_settings

    get_settings.cache_clear()
    vclvirt_logging.configure_logging(json=False, level="WARNING", stream=stream)
    try:
        logging.getLogger("redis").warning("token=%s", TOKEN)
    finally:
        get_settings.cache_clear()
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    assert "token=***" in stream.getvalue() and TOKEN not in stream.getvalue()


@pytest.mark.parametrize(
    ("url", "password", "shown"),
    [
        ("redis://:p@ss@127.0.0.1:6379/0", "p@ss", "redis://:***@127.0.0.1:6379/0"),
        ("redis://:pa:ss@127.0.0.1:6379/0", "pa:ss", "redis://:***@127.0.0.1:6379/0"),
        ("redis://ops:a@b:c@redis/2", "a@b:c", "redis://ops:***@redis/2"),
        ("redis://:@:xy@[::1]:1/0", "@:xy", "redis://:***@[::1]:1/0"),
    ],
)
def test_passwords_holding_at_or_colon_are_masked_whole(url, password, shown):
    """A password written with raw @ or : is found whole and masked, never half shown."""
    assert url_password(url) == password
    assert masked_url(url) == shown
    assert password in known_secrets(Settings(broker_url=url), {})


def test_flower_password_holding_a_colon_is_known_whole():
    """FLOWER_BASIC_AUTH user:pass splits at the first colon: the rest is the password."""
    secrets = known_secrets(Settings(), {"FLOWER_BASIC_AUTH": "ops:pa:ss@1,ro:x:y:z"})
    assert {"pa:ss@1", "x:y:z"} <= set(secrets)


@pytest.mark.parametrize(("password", "known"), [("abc", False), ("abcd", True)])
def test_secrets_shorter_than_four_characters_are_not_redacted_by_value(password, known):
    """A 4-character password is redacted by value; a 3-character one would hit ordinary text."""
    secrets = known_secrets(Settings(broker_url=f"redis://:{password}@h:1/0"), {})
    assert (password in secrets) is known


def test_cli_never_shows_a_broker_password_holding_at_or_colon(tmp_path):
    """`vclvirt status` with the broker away says where, with the password (raw @ and :)
    masked, and exits 5."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "VCLVIRT_BROKER_URL": "redis://:s3cr@t:pw@127.0.0.1:1/0",
        "VCLVIRT_INVENTORY": str(tmp_path / "none.toml"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "vclvirt", "status", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 5, proc.stderr
    assert "redis://:***@127.0.0.1:1/0" in proc.stderr
    assert "s3cr" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("url", [None, "", "redis://h:1/0", "redis://user@h/0", "redis://:pw@[bad"])
def test_url_without_a_readable_password_has_none(url):
    """No URL, no password in it, or a URL that cannot be parsed: no password."""
    assert url_password(url) is None


def test_url_password_is_given_as_written():
    """The password is returned percent-encoded, as it stands in the URL."""
    assert url_password("redis://:p%40ss@h:1/0") == "p%40ss"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw1234@h/0", "redis://:***@h/0"),
        ("redis://u:pw1234@[fe80::1]/0", "redis://u:***@[fe80::1]/0"),
        ("redis://u:pw1234@H.Example:7/0?x=1", "redis://u:***@h.example:7/0?x=1"),
    ],
)
def test_masked_url_keeps_user_host_and_port_only_when_given(url, shown):
    """No port stays no port; an IPv6 host keeps its brackets; path and query stay."""
    assert masked_url(url) == shown


def test_known_secrets_hold_each_form_longest_first():
    """A secret is known as written, percent-decoded and JSON-escaped, the longest first."""
    settings = Settings(
        api_token="  " + "k" * 40 + "  ",
        broker_url="redis://:a%22b%5Cc@h:1/0",
        result_backend="redis://:backend-pw@h:1/2",
    )
    secrets = known_secrets(settings, {"FLOWER_PASSWORD": "fl\\pw"})
    assert {"k" * 40, "a%22b%5Cc", 'a"b\\c', 'a\\"b\\\\c', "backend-pw", "fl\\pw", "fl\\\\pw"} <= (
        set(secrets)
    )
    assert "  " + "k" * 40 + "  " not in secrets
    assert [len(s) for s in secrets] == sorted((len(s) for s in secrets), reverse=True)


def test_blank_token_and_empty_flower_settings_are_no_secrets():
    """A blank token, an empty FLOWER_BASIC_AUTH entry or FLOWER_PASSWORD add nothing."""
    settings = Settings(api_token="   ", broker_url="redis://h:1/0", result_backend=None)
    assert known_secrets(settings, {"FLOWER_BASIC_AUTH": ",,", "FLOWER_PASSWORD": ""}) == []


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw1234@/0", "redis://:***@/0"),
        ("redis://u:pw1234@:6379/0", "redis://u:***@:6379/0"),
    ],
)
def test_masked_url_without_a_host_stays_without_one(url, shown):
    """A URL with a password but no host name is masked without inventing a host."""
    assert masked_url(url) == shown


def test_no_flower_settings_add_no_secret():
    """Without FLOWER_BASIC_AUTH or FLOWER_PASSWORD in the environment nothing is added."""
    assert known_secrets(Settings(api_token=None, broker_url="redis://h:1/0"), {}) == []


def test_api_never_shows_a_broker_password_holding_at_or_colon(monkeypatch):
    """The API's 503 when the broker is away names it with the password (raw @ and :) masked."""
    from fastapi.testclient import TestClient
    from redis.exceptions import ConnectionError as RedisConnectionError

    from vclvirt import dispatch
    from vclvirt.api import create_api

    def away(reservation_id: int) -> None:
        raise RedisConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    monkeypatch.setattr(dispatch, "status", away)
    settings = Settings(broker_url="redis://:s3cr@t:pw@127.0.0.1:1/0", api_token=None)
    answer = TestClient(create_api(settings)).get("/v1/reservations/1")
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["code"] == "BROKER_UNREACHABLE"
    assert "redis://:***@127.0.0.1:1/0" in error["message"]
    assert "s3cr" not in answer.text
