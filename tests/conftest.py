"""Shared fixtures: the real test bed (Redis, libvirtd, two sshd hosts) and real workers.

Nothing here skips: when a service of the test bed cannot be started, the tests
that need it fail with the test bed's own error message.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.waiting import wait_for  # noqa: F401 - the other tiers import it from here

ROOT = Path(__file__).resolve().parents[1]
HOLD_DIR_ENV = "VCLVIRT_TEST_HOLD_DIR"  # tests/e2e/conftest.py `holds`
TESTBED = Path(os.environ.get("VCLVIRT_TESTBED", "/var/lib/vclvirt-testbed"))
REDIS_PORT = os.environ.get("VCLVIRT_TESTBED_REDIS_PORT", "6390")
# The two sshd "hosts" (scripts/testbed): several test beds can run side by side.
SSH_PORT_A = int(os.environ.get("VCLVIRT_TESTBED_SSH_PORT_A", "2201"))
SSH_PORT_B = int(os.environ.get("VCLVIRT_TESTBED_SSH_PORT_B", "2202"))
# Tests use their own Redis database, so a demo running beside them is not disturbed.
# The fleet tier runs with the fleet's own Redis (scripts/run-tests), beside this one.
TEST_BROKER = os.environ.get("VCLVIRT_TEST_BROKER") or f"redis://127.0.0.1:{REDIS_PORT}/1"

os.environ["VCLVIRT_TESTBED"] = str(TESTBED)
os.environ["VCLVIRT_BROKER_URL"] = TEST_BROKER
os.environ["VCLVIRT_INVENTORY"] = str(TESTBED / "inventory.toml")
GUEST_CACHE = Path(os.environ.get("VCLVIRT_GUEST_CACHE", "/var/cache/vclvirt/guest"))
os.environ["VCLVIRT_GUEST_KEY_FILE"] = str(GUEST_CACHE / "guest_key")


@pytest.fixture(scope="session")
def testbed() -> Path:
    """Start (or find running) the loopback test bed; fail loudly if any service is down."""
    proc = subprocess.run(
        [str(ROOT / "scripts" / "testbed"), "start"], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"test bed did not start:\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    import redis

    redis.Redis.from_url(TEST_BROKER).flushdb()
    return TESTBED


@pytest.fixture(scope="session")
def inventory(testbed: Path) -> Any:
    from vclvirt.config.inventory import load_inventory

    return load_inventory(testbed / "inventory.toml")


# Distinct small ids: user-mode guests forward port (range start + id % range size).
_computer_ids: dict[str, int] = {}


def make_reservation(
    reservation_id: int,
    computer: str,
    image_name: str,
    *,
    host: str = "node-a",
    computer_id: int | None = None,
    image_id: int = 501,
    revision: int = 0,
    os_type: str = "none",
    state: str = "new",
) -> dict[str, Any]:
    """A valid reservation dict; tests vary only what they are about."""
    cid = computer_id or _computer_ids.setdefault(computer, len(_computer_ids) + 1)
    mac_tail = f"{cid % 256:02x}:{(cid // 256) % 256:02x}"
    return {
        "reservation_id": reservation_id,
        "request_id": reservation_id + 100000,
        "state": state,
        "host": host,
        "computer": {
            "id": cid,
            "hostname": f"{computer}.lab.test",
            "eth0_mac": f"52:54:00:aa:{mac_tail}",
            "eth1_mac": f"52:54:00:bb:{mac_tail}",
            "private_ip": None,
        },
        "image": {
            "id": image_id,
            "name": image_name,
            "revision": revision,
            "revision_id": image_id * 100 + revision,
            "pretty_name": f"Test image {image_name}",
            "os_type": os_type,
            "os_name": "linux",
            "min_ram_mb": 64,
            "vcpus": 1,
            "project": "vcl",
        },
    }


def uncached_image(testbed: Path, name: str, size: str, data: str, host: str) -> Path:
    """A repository image holding `data` bytes (e.g. "300M") of a pattern, and no master of
    it on `host` yet, so the next load there copies it."""
    source = repository_image(testbed, name, size=size)
    if not _holds_pattern(source, data):  # written once: a second test reuses it as it is
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {data}", str(source)],
            check=True,
            capture_output=True,
        )
    for cached in (testbed / "hosts" / host / "images").glob(f"{name}*"):
        cached.unlink()
    return source


def _holds_pattern(image: Path, data: str) -> bool:
    """Whether an earlier call left the image's first `data` bytes allocated and holding
    the pattern: its map shows them as data, and qemu-io finds the pattern in their first
    and last MiB (reading all of 1.9 GB would cost more than half the write)."""
    size = _bytes(data)
    mapped = subprocess.run(
        ["qemu-img", "map", "-U", "--output=json", str(image)],
        capture_output=True,
        text=True,
        check=True,
    )
    covered = sum(
        min(e["start"] + e["length"], size) - e["start"]
        for e in json.loads(mapped.stdout)
        if e["data"] and e["start"] < size
    )
    if covered != size:
        return False
    for offset in (0, size - 2**20):
        check = subprocess.run(
            ["qemu-io", "-f", "qcow2", "-r", "-c", f"read -P 0x5a {offset} 1M", str(image)],
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode != 0 or "Pattern verification failed" in check.stdout:
            return False
    return True


def _bytes(size: str) -> int:
    """A size as qemu-io writes it ("1900M": K, M, G are powers of 1024) in bytes."""
    found = re.fullmatch(r"(\d+)([KMG])", size)
    assert found, f"size {size!r} is not <digits>K|M|G"
    return int(found[1]) * 1024 ** ("KMG".index(found[2]) + 1)


def repository_image(testbed: Path, name: str, size: str = "16M") -> Path:
    """A real qcow2 image in the shared repository, as `<repo>/<name>/<name>.qcow2`."""
    directory = testbed / "repository" / name
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.qcow2"
    if not path.exists():
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


@dataclass
class Worker:
    host: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                continue
        return lines

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole worker (main process and pool children)."""
        os.killpg(self.process.pid, sig)
        self.process.wait(timeout=30)

    def dump_stacks(self) -> None:
        """Where every thread of every process of the worker is, into its log (py-spy):
        what a failed test leaves to read when a step hung."""
        found = subprocess.run(
            ["pgrep", "-g", str(self.process.pid)], capture_output=True, text=True, check=False
        )
        with self.log_path.open("a") as log:
            for pid in found.stdout.split():
                log.write(f"\n=== py-spy dump --pid {pid}\n")
                log.flush()
                subprocess.run(
                    [str(Path(sys.executable).parent / "py-spy"), "dump", "--pid", pid],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    check=False,
                    timeout=30,
                )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Each phase's report on the test item, so fixtures can tell that the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def start_worker(
    request: pytest.FixtureRequest, testbed: Path, tmp_path: Path, cleanup_computers: list[str]
) -> Iterator[Callable[..., Worker]]:
    """Start real `vclvirt worker` processes (own process group each); stopped after the test,
    before its computers are cleaned up (so no worker makes them again)."""
    started: list[Worker] = []

    def start(
        host: str | Sequence[str],
        concurrency: int | None = 2,
        *,
        wrap: tuple[str, ...] = (),
        unset: tuple[str, ...] = (),
        **env: str,
    ) -> Worker:
        """`host`: one name or several (one worker serving them all); `concurrency` None:
        the CLI's default; `wrap`: argv the worker's command is appended to (it must exec
        it, e.g. unshare); `unset`: environment variables the worker does not get."""
        hosts = [host] if isinstance(host, str) else list(host)
        name = "+".join(hosts)
        log_path = tmp_path / f"worker-{name}-{len(started)}.log"
        environment = {k: v for k, v in {**os.environ, **env}.items() if k not in unset}
        hold = environment.pop(HOLD_DIR_ENV, None)  # the step hold: a hook, not a setting
        argv = [
            *wrap,
            sys.executable,
            "-m",
            *(("tests.hold_worker", hold) if hold else ("vclvirt",)),
            "worker",
            *(arg for served in hosts for arg in ("--host", served)),
            *(("--concurrency", str(concurrency)) if concurrency is not None else ()),
        ]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
                cwd=ROOT,
            )
        worker = Worker(name, process, log_path)
        started.append(worker)
        deadline = time.monotonic() + 60
        while "ready." not in log_path.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"worker {shlex.join(argv)} did not start:\n{log_path.read_text()}")
            time.sleep(0.2)
        return worker

    yield start
    call = getattr(request.node, "report_call", None)
    for worker in started:
        if call is not None and call.failed and worker.process.poll() is None:
            worker.dump_stacks()
        worker.stop()


def vclvirt_cli(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the real CLI as a user would (with extra environment); the timeout only ends a
    hung call."""
    return subprocess.run(
        [sys.executable, "-m", "vclvirt", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **env},
        check=False,
    )


def computer_domains(computer: str) -> list[str]:
    """Names of the libvirt domains (any state) that belong to the computer."""
    import libvirt

    from vclvirt.naming import belongs_to_computer

    conn = libvirt.open("qemu:///system")
    try:
        return sorted(
            d.name() for d in conn.listAllDomains(0) if belongs_to_computer(d.name(), computer)
        )
    finally:
        conn.close()


@pytest.fixture
def cleanup_computers(testbed: Path) -> Iterator[list[str]]:
    """Computers named here lose their domains and overlays after the test."""
    import libvirt

    from vclvirt.naming import belongs_to_computer

    computers: list[str] = []
    yield computers
    conn = libvirt.open("qemu:///system")

    def remove(domain: Any) -> None:
        with contextlib.suppress(libvirt.libvirtError):  # gone meanwhile
            if domain.isActive():
                domain.destroy()
            domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)

    try:
        ours = [
            d
            for d in conn.listAllDomains(0)
            if any(belongs_to_computer(d.name(), c) for c in computers)
        ]
        with ThreadPoolExecutor(max_workers=8) as pool:  # a QEMU takes ~2 s to exit
            list(pool.map(remove, ours))
    finally:
        conn.close()
    for computer in computers:
        for path in testbed.glob(f"hosts/*/vms/{computer}_*"):
            path.unlink()


GUEST_IMAGE = "linux-VclvirtTestGuest-900-v0"


@pytest.fixture(scope="session")
def guest_image(testbed: Path) -> str:
    """The bootable test guest (scripts/build-test-guest), as an image in the repository."""
    proc = subprocess.run(
        [str(ROOT / "scripts" / "build-test-guest")], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"test guest did not build:\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    directory = testbed / "repository" / GUEST_IMAGE
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "cp",
            "--sparse=always",
            str(GUEST_CACHE / "vclvirt-test-guest.qcow2"),
            str(directory / f"{GUEST_IMAGE}.qcow2"),
        ],
        check=True,
    )
    shutil.copyfile(GUEST_CACHE / "vclvirt-test-guest.xml", directory / f"{GUEST_IMAGE}.xml")
    for cached in testbed.glob(f"hosts/*/images/{GUEST_IMAGE}.*"):
        cached.unlink()  # every session copies the current build to the hosts again
    return GUEST_IMAGE


def guest_shell(testbed: Path, reservation: dict[str, Any], *argv: str) -> str:
    """Run argv in the reservation's guest over SSH, as post_load does."""
    from vclvirt.config.inventory import load_inventory
    from vclvirt.config.settings import Settings
    from vclvirt.guest.access import connect_guest, guest_target
    from vclvirt.models import parse_reservation

    host = load_inventory(testbed / "inventory.toml").host(reservation["host"])
    target = guest_target(host, parse_reservation(reservation), Settings())
    guest = connect_guest(target, timeout=60)
    try:
        return guest.run(list(argv)).text
    finally:
        guest.close()


@pytest.fixture
def state_redis(testbed: Path) -> Iterator[Any]:
    """A real Redis client on a database of its own (3), empty for each test: for the
    record, lease, lock and recovery tests, away from the workers' database."""
    from vclvirt.state.client import redis_client

    client = redis_client(f"redis://127.0.0.1:{REDIS_PORT}/3")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


# --- Fault injection for image copies (tests of #13; see tests/faults.py) -----------------


@pytest.fixture
def qemu_img_faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A `qemu-img` shim first in PATH for this test (local transports only)."""
    from tests.faults import QemuImgFaults

    faults = QemuImgFaults(tmp_path / "qemu-img-faults", monkeypatch)
    yield faults
    faults.resume()  # no paused copy outlives its test


@pytest.fixture
def holds(tmp_path: Path) -> Iterator[tuple[dict[str, str], Any]]:
    """A hold directory for workers (their env) and a function that holds or releases
    step S of reservation R (`hold(R, S)` / `hold(R, S, False)`)."""
    directory = tmp_path / "holds"
    directory.mkdir()

    def hold(rid: int, step: str, on: bool = True) -> None:
        marker = directory / f"{rid}.{step}"
        if on:
            marker.touch()
        else:
            marker.unlink(missing_ok=True)

    yield {"VCLVIRT_TEST_HOLD_DIR": str(directory)}, hold
    for marker in directory.iterdir():
        marker.unlink()
