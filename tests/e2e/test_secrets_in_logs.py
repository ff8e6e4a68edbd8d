"""Known secrets planted in every process, failure paths run, every log grepped (#10).

The API token, a password in the broker URL and Flower's password are given to the
API, the CLI, a worker and Flower; then the broker goes missing, tokens are wrong,
a load fails on a worker. No line any of them wrote may hold a planted secret.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import REDIS_PORT, ROOT, make_reservation, vclvirt_cli, wait_for
from tests.e2e.api_process import free_port, start_api

TOKEN = "planted-token-" + secrets.token_hex(16)
BROKER_PASSWORD = "planted-broker-" + secrets.token_hex(8)
FLOWER_PASSWORD = "planted-flower-" + secrets.token_hex(8)
PLANTED = (TOKEN, BROKER_PASSWORD, FLOWER_PASSWORD)
# Redis on the test bed has no password and accepts (ignores) one: the URL carries it all
# the same, as a deployment's does. Database 6 is this test's own.
BROKER_UP = f"redis://:{BROKER_PASSWORD}@127.0.0.1:{REDIS_PORT}/6"


def _secret_env(broker: str) -> dict[str, str]:
    return {
        "VCLVIRT_API_TOKEN": TOKEN,
        "VCLVIRT_BROKER_URL": broker,
        "FLOWER_BASIC_AUTH": f"ops:{FLOWER_PASSWORD}",
        "FLOWER_PASSWORD": FLOWER_PASSWORD,
    }


def _leaks(text: str) -> list[str]:
    return [secret for secret in PLANTED if secret in text]


@pytest.fixture
def broker_db(testbed: Path):
    client = redis.Redis.from_url(f"redis://127.0.0.1:{REDIS_PORT}/6")
    client.flushdb()
    yield client
    client.flushdb()


def test_api_logs_hold_no_secret_when_the_broker_is_down_or_tokens_are_wrong(testbed, tmp_path):
    """Broker down, wrong tokens, the token in a URL: the API's log has none of the secrets."""
    down = f"redis://:{BROKER_PASSWORD}@127.0.0.1:{free_port()}/1"
    api = start_api(tmp_path, token=TOKEN, **_secret_env(down))
    try:
        api.wait_ready()
        reservation = make_reservation(7960, "sec-leak-api", "img-1-v0")
        with api.client() as client, api.client(token="wrong-" + "w" * 40) as wrong:
            assert client.post("/v1/loads", json=reservation).status_code == 503
            assert wrong.get("/v1/failed").status_code == 401
            assert httpx.get(f"{api.url}/v1/{TOKEN}").status_code == 401
            basic = {"Authorization": f"Basic {TOKEN}"}
            assert httpx.get(f"{api.url}/v1/failed", headers=basic).status_code == 401
    finally:
        api.stop()
    log = api.log()
    assert "broker_unreachable" in log and '"status": 503' in log  # the paths did run
    assert "/v1/***" in log  # the token sent as a path is logged redacted
    assert _leaks(log) == [], log


def test_cli_output_holds_no_secret_when_the_broker_is_down(testbed, tmp_path):
    """Every CLI command that needs the broker, with it down: exit 5, no secret printed."""
    down = f"redis://:{BROKER_PASSWORD}@127.0.0.1:{free_port()}/1"
    path = tmp_path / "reservation.json"
    path.write_text(json.dumps(make_reservation(7961, "sec-leak-cli", "img-1-v0")))
    for args in (("--json-logs", "load", str(path)), ("--json-logs", "retry", "7961")):
        result = vclvirt_cli(*args, **_secret_env(down))
        assert result.returncode == 5, (args, result.stderr)
        assert _leaks(result.stdout + result.stderr) == [], (args, result.stderr)


def test_worker_logs_hold_no_secret_with_the_broker_down(testbed, tmp_path):
    """A worker that cannot reach its broker keeps retrying; its lines hold no secret."""
    down = f"redis://:{BROKER_PASSWORD}@127.0.0.1:{free_port()}/1"
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "vclvirt", "worker", "--host", "node-a", "--concurrency", "1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **_secret_env(down)},
            cwd=ROOT,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: "Cannot connect to redis" in log_path.read_text(errors="replace"),
            60,
            "the worker to report the missing broker",
        )
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    text = log_path.read_text(errors="replace")
    assert ":**@127.0.0.1" in text  # Celery shows the URL, masked
    assert _leaks(text) == [], text


def test_a_failing_load_and_flower_leak_no_secret(
    broker_db, start_worker, tmp_path, cleanup_computers
):
    """A worker and the CLI on a password broker run a load that fails; Flower with its
    password refuses a wrong one. No log line, no output, no command line shows a secret."""
    cleanup_computers.append("sec-leak-worker")
    worker = start_worker("node-a", 1, **_secret_env(BROKER_UP))
    path = tmp_path / "reservation.json"
    path.write_text(json.dumps(make_reservation(7962, "sec-leak-worker", "img-missing-3-v0")))
    result = vclvirt_cli("load", str(path), "--wait", "--timeout", "120", **_secret_env(BROKER_UP))
    assert result.returncode == 1 and "IMAGE_NOT_FOUND" in result.stderr, result.stderr

    flower_log = tmp_path / "flower.log"
    port = free_port()
    with flower_log.open("wb") as log:
        flower = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "celery"),
                "flower",
                "--address=127.0.0.1",
                f"--port={port}",
                "--persistent=False",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            # The broker URL too goes in the environment: it holds a password.
            env={**os.environ, **_secret_env(BROKER_UP), "CELERY_BROKER_URL": BROKER_UP},
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}/api/workers"
        wait_for(lambda: _answers(url), 60, "Flower to answer")
        assert httpx.get(url, auth=("ops", "wrong-password"), timeout=10).status_code == 401
        assert httpx.get(url, auth=("ops", FLOWER_PASSWORD), timeout=10).status_code == 200
        cmdline = Path(f"/proc/{flower.pid}/cmdline").read_bytes().decode(errors="replace")
        assert _leaks(cmdline) == []  # ps shows no password
    finally:
        os.killpg(flower.pid, signal.SIGTERM)
        flower.wait(timeout=30)

    outputs = {
        "worker": worker.log_path.read_text(errors="replace"),
        "cli": result.stdout + result.stderr,
        "flower": flower_log.read_text(errors="replace"),
    }
    assert '"event": "step_failed"' in outputs["worker"]  # the failure path did run
    for name, text in outputs.items():
        assert _leaks(text) == [], (name, text)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code in (200, 401)
    except httpx.HTTPError:
        return False
