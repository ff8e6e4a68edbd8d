"""Flower (started by scripts/testbed) shows a real reservation load: one task per load,
named after the operation, with a readable, secret-free argument summary and its steps."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import GUEST_CACHE, ROOT, make_reservation, repository_image
from vclvirt import dispatch
from vclvirt.operations.load import LOAD_STEPS

STEPS = tuple(LOAD_STEPS)
FLOWER_USER = "vclvirt"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)
RESERVATION = 7701


def _flower_url() -> str:
    port = os.environ.get("VCLVIRT_TESTBED_FLOWER_PORT", "5555")
    return os.environ.get("VCLVIRT_FLOWER_URL", f"http://127.0.0.1:{port}")


def _flower_get(testbed: Path, path: str) -> Any:
    """GET a Flower API path as JSON, with the test bed's basic-auth credentials."""
    password = (testbed / "flower" / "password").read_text().strip()
    token = base64.b64encode(f"{FLOWER_USER}:{password}".encode()).decode()
    request = urllib.request.Request(
        _flower_url() + path, headers={"Authorization": f"Basic {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _load_in_flower(testbed: Path, reservation_id: int, since: float) -> dict[str, Any] | None:
    """Flower's newest `vclvirt.load` task of this reservation received after `since`."""
    tasks = _flower_get(testbed, "/api/tasks?limit=500&sort_by=-received")
    marker = f"reservation={reservation_id} "
    for task_id, task in tasks.items():  # newest first
        if (
            task.get("name") == "vclvirt.load"
            and marker in (task.get("kwargs") or "")
            and (task.get("received") or 0) >= since
        ):
            return {**task, "uuid": task_id}
    return None


def _load_succeeded(testbed: Path, reservation_id: int, since: float = 0) -> dict[str, Any] | None:
    found = _load_in_flower(testbed, reservation_id, since)
    return found if found and found["state"] == "SUCCESS" else None


def _secrets() -> list[str]:
    """Strings that must never reach Flower: private-key markers and key file bodies."""
    secrets = ["BEGIN OPENSSH", "PRIVATE KEY"]
    for key in (Path(os.environ["VCLVIRT_TESTBED"]) / "ssh/id_ed25519", GUEST_CACHE / "guest_key"):
        if key.is_file():
            body = [line for line in key.read_text().splitlines() if "PRIVATE KEY" not in line]
            secrets.extend(line for line in body if len(line) >= 16)
    return secrets


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    profile = tempfile.mkdtemp(prefix="vclvirt-chromium-")
    try:
        return subprocess.run(
            [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


IMAGE = "linux-E2eFlower-650-v0"


def _load_and_wait_for_flower(
    testbed: Path, start_worker: Any, cleanup_computers: list[str]
) -> dict[str, Any]:
    """Load RESERVATION on a real node-a worker; return its task once Flower shows it done."""
    repository_image(testbed, IMAGE)
    cleanup_computers.append("e2e-flower")
    worker = start_worker("node-a")
    reservation = make_reservation(RESERVATION, "e2e-flower", IMAGE, image_id=650, computer_id=77)
    since = time.time() - 1  # Flower outlives test sessions: ignore earlier runs' tasks

    handle = dispatch.load(reservation)
    try:
        final = handle.wait(timeout=180)
    except TimeoutError as exc:
        status = handle.status()
        log = worker.log_path.read_text(errors="replace")[-3000:]
        raise AssertionError(
            f"{exc}; status {status.to_dict() if status else None}; worker log tail:\n{log}"
        ) from exc
    assert final.state == "succeeded", final.to_dict()

    deadline = time.monotonic() + 60
    while (task := _load_succeeded(testbed, RESERVATION, since)) is None:
        if time.monotonic() > deadline:
            shown = _load_in_flower(testbed, RESERVATION, since)
            raise AssertionError(
                f"Flower ({_flower_url()}/api/tasks) did not show the load of reservation "
                f"{RESERVATION} as SUCCESS within 60s; it shows {shown}"
            )
        time.sleep(0.5)
    return task


def test_flower_shows_the_load_with_its_steps_and_secret_free_kwargs(
    testbed, start_worker, cleanup_computers
):
    """Flower lists the load of a reservation as SUCCESS on node-a, with a secret-free
    argument summary and a result naming every step's outcome."""
    task = _load_and_wait_for_flower(testbed, start_worker, cleanup_computers)

    assert task["worker"].startswith("node-a@"), task["worker"]
    assert task["kwargs"].startswith(
        f"reservation={RESERVATION} request={RESERVATION + 100000} "
        f"computer=e2e-flower.lab.test image={IMAGE} host=node-a"
    ), task["kwargs"]
    shown = f"{task['args']} {task['kwargs']} {task.get('result')}"
    assert "eth0_mac" not in shown, f"the reservation dict leaked: {shown}"
    leaked = [s for s in _secrets() if s in shown]
    assert not leaked, f"Flower shows secret material {leaked}"
    for step in STEPS:
        assert f"'{step}': 'succeeded'" in task["result"], task["result"]
    info = _flower_get(testbed, f"/api/task/info/{task['uuid']}")
    assert (info["name"], info["state"]) == ("vclvirt.load", "SUCCESS")


def test_flower_task_page_screenshot_shows_the_load(testbed, start_worker, cleanup_computers):
    """Headless Chromium renders Flower's page of the load task (not a 401) to a PNG."""
    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: install the Debian package 'chromium' "
        "(apt-get install -y chromium; scripts/bootstrap should list it)"
    )
    # After the test above, Flower already has the load; run alone, this test loads it.
    task = _load_succeeded(testbed, RESERVATION) or _load_and_wait_for_flower(
        testbed, start_worker, cleanup_computers
    )
    task_id = task["uuid"]
    password = (testbed / "flower" / "password").read_text().strip()
    url = urllib.parse.urlsplit(_flower_url())
    page = f"{url.scheme}://{FLOWER_USER}:{password}@{url.netloc}/task/{task_id}"

    dom = _chromium("--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert task_id in dom.stdout and "vclvirt.load" in dom.stdout, (
        f"Chromium did not get Flower's task page (basic auth failed?):\n{dom.stdout[:2000]}"
    )
    assert f"reservation={RESERVATION}" in dom.stdout
    assert "SUCCESS" in dom.stdout

    png = ROOT / "artifacts" / f"flower-task-{RESERVATION}.png"
    png.parent.mkdir(exist_ok=True)
    png.unlink(missing_ok=True)
    shot = _chromium(f"--screenshot={png}", page)
    assert shot.returncode == 0, shot.stderr[-2000:]
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), f"{png} is not a PNG"
    assert len(data) > 10_000, f"{png} is only {len(data)} bytes: probably a blank or error page"
