"""Apache VCL 2.5.1's own `bin/vcld -nodaemon` (tests/e2e/vcl_real.py) processing requests
for computers provisioned by contrib/vcl's module, against VCL's schema in MariaDB, a real
`vclvirt api`, real workers, libvirt and the booting test guest. vcld forks its own state
modules (new.pm for new, reload and tomaintenance; image.pm for image); the states checked
are the ones vcld itself writes. The images' OS module is VCL's base OS module with only
the calls that need the guest's port 22 replaced (tests/e2e/vcl_os says why).

Each test prints the load-log rows and the request/computer states it saw (pytest -s).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import computer_domains, make_reservation, wait_for
from tests.e2e import vcl_real
from tests.e2e.vcl_helpers import free_port
from tests.e2e.vcl_real import Computer, VclSite, Watched
from vclvirt import dispatch


@pytest.fixture
def vcld(site: VclSite) -> Iterator[Callable[..., None]]:
    """Start vcld (at most once per test); stopped with the state processes it forked."""
    running: list[Any] = []

    def start(**env: str) -> None:
        context = vcl_real.running_vcld(site, **env)
        context.__enter__()
        running.append(context)

    yield start
    for context in running:
        context.__exit__(None, None, None)


def request(
    db: Any,
    request_id: int,
    computer: Computer,
    image_id: int,
    image: str,
    state: str,
    *,
    computer_state: str = "available",
    forimaging: bool = False,
) -> int:
    """The computer (its row made anew), the image (test guest OS) and a request; returns the
    reservation id."""
    if computer_state:
        vcl_real.add_computer(db, computer, computer_state)
    revisions = vcl_real.add_image(
        db, image_id, image, f"Vcld {image}", {0: image}, os_id=vcl_real.TEST_OS
    )
    reservation_id = request_id + 1000
    vcl_real.add_request(
        db,
        request_id,
        reservation_id,
        computer_id=computer.id,
        image_id=image_id,
        imagerevision_id=revisions[0],
        state=state,
        forimaging=forimaging,
    )
    return reservation_id


def show(what: str, watched: Watched) -> None:
    print(f"\n== {what}")
    for row in watched.loadlog:
        print(f"  loadlog {row['name']:<18} {row['info']}")
    print(f"  request states  {' -> '.join(watched.request_states)}")
    print(f"  computer states {' -> '.join(watched.computer_states)}")
    print(f"  at the end      {watched.final}")


def ended(seen: dict[str, Any]) -> bool:
    """vcld deletes a request it completed (complete → row gone); or it left it failed,
    reserved or in maintenance."""
    return seen["state"] in (None, "failed", "reserved", "maintenance")


@pytest.mark.slow  # boots the test guest
def test_vcld_reload_then_ready_then_tomaintenance(
    db, site, vcld, guest_image, start_worker, cleanup_computers
):
    """A computer with eth1 MAC and private IP NULL: a reload request loads the guest (load
    log startload, transfervm, vmsetupconfig, startvm as vclvirt's steps end; vcld adds
    loadimagecomplete), request complete, computer available with the image; a second
    reload finds it READY and does not load; tomaintenance puts the computer in maintenance,
    off its VM host, its domain gone."""
    cleanup_computers.append("vcl-vcld-a")
    start_worker("node-a")
    computer = Computer(131, "vcl-vcld-a.lab.test", "52:54:00:aa:83:01", None)
    reservation_id = request(db, 5131, computer, 900, guest_image, "reload")
    vcld()

    loaded = vcl_real.watch(db, 5131, reservation_id, 131, ended, 300)
    show("reload", loaded)
    names = loaded.names()
    assert names[:3] == ["begin", "statuscheck", "loadimageblade"], names
    steps = [n for n in names if n in ("startload", "transfervm", "vmsetupconfig", "startvm")]
    assert steps == ["startload", "transfervm", "vmsetupconfig", "startvm"], names
    assert names.index("startvm") < names.index("loadimagecomplete"), names
    assert loaded.request_states == ["pending/reload", "complete/reload"]
    assert loaded.computer_states == ["reloading", "available"]
    assert loaded.final["state"] is None  # vcld deletes the request it completed
    assert loaded.final["computer"] == "available"
    assert loaded.final["current_image"] == guest_image
    assert _module_warnings(site) == []

    reservation_id = request(db, 5132, computer, 900, guest_image, "reload", computer_state="")
    ready = vcl_real.watch(db, 5132, reservation_id, 131, ended, 120)
    show("reload of a computer that is READY", ready)
    assert "startload" not in ready.names() and "loadimageblade" not in ready.names()
    assert ready.request_states == ["pending/reload", "complete/reload"]
    assert ready.final["computer"] == "available"
    assert len(computer_domains("vcl-vcld-a")) == 1

    reservation_id = request(
        db, 5133, computer, 900, guest_image, "tomaintenance", computer_state=""
    )
    maintenance = vcl_real.watch(db, 5133, reservation_id, 131, ended, 120)
    show("tomaintenance", maintenance)
    assert maintenance.request_states == ["pending/tomaintenance", "complete/tomaintenance"]
    assert maintenance.computer_states == ["maintenance"]
    assert maintenance.final["computer"] == "maintenance"
    assert maintenance.final["vmhostid"] is None
    assert maintenance.final["current_image"] == "noimage"
    assert computer_domains("vcl-vcld-a") == []
    assert _module_warnings(site) == []


def _module_warnings(site: VclSite) -> list[str]:
    return vcl_real.module_warnings(site.log_lines())


@pytest.mark.slow  # boots the test guest
def test_vcld_new_request_ends_reserved(
    db, site, vcld, guest_image, start_worker, cleanup_computers
):
    """new: loaded through the module, then reserved (the OS module adds the user); vcld
    sets the request 'reserved', and its reserved.pm the computer."""
    cleanup_computers.append("vcl-vcld-new")
    start_worker("node-a")
    computer = Computer(132, "vcl-vcld-new.lab.test", "52:54:00:aa:84:01", "52:54:00:bb:84:01")
    reservation_id = request(db, 5134, computer, 900, guest_image, "new")
    vcld()

    done = vcl_real.watch(
        db, 5134, reservation_id, 132, lambda now: now["computer"] == "reserved", 300
    )
    show("new", done)
    names = done.names()
    steps = [n for n in names if n in ("startload", "transfervm", "vmsetupconfig", "startvm")]
    assert steps == ["startload", "transfervm", "vmsetupconfig", "startvm"], names
    assert names.index("startvm") < names.index("loadimagecomplete") < names.index("addinguser")
    # then vcld's reserved.pm waits for the user to acknowledge
    assert done.request_states == ["pending/new", "reserved/new", "pending/reserved"]
    assert done.computer_states == ["reloading", "reserved"]
    assert done.final["current_image"] == guest_image
    sent = dispatch.status(reservation_id).reservation
    assert sent["computer"]["eth1_mac"] == "52:54:00:bb:84:01"
    assert _module_warnings(site) == []


@pytest.mark.slow  # boots the test guest
def test_vcld_reinstall_reloads_a_computer_that_is_ready(
    db, site, vcld, guest_image, start_worker, cleanup_computers
):
    """reinstall: vcld does not ask node_status and the module asks vclvirt for a full
    reload although the guest runs the image; then reserved as for new."""
    cleanup_computers.append("vcl-vcld-re")
    start_worker("node-a")
    computer = Computer(133, "vcl-vcld-re.lab.test", "52:54:00:aa:85:01", None)
    reservation_id = request(db, 5135, computer, 900, guest_image, "reload")
    vcld()
    loaded = vcl_real.watch(db, 5135, reservation_id, 133, ended, 300)
    assert loaded.request_states == ["pending/reload", "complete/reload"], loaded
    first = computer_domains("vcl-vcld-re")

    reservation_id = 6142
    vcl_real.add_request(
        db,
        5142,
        reservation_id,
        computer_id=133,
        image_id=900,
        imagerevision_id=90000,
        state="reinstall",
        laststate="inuse",
    )
    again = vcl_real.watch(
        db, 5142, reservation_id, 133, lambda now: now["computer"] == "reserved", 300
    )
    show("reinstall", again)
    names = again.names()
    steps = [n for n in names if n in ("startload", "transfervm", "vmsetupconfig", "startvm")]
    assert steps == ["startload", "transfervm", "vmsetupconfig", "startvm"], names
    assert again.request_states[:2] == ["pending/reinstall", "reserved/reinstall"]
    assert again.computer_states == ["reloading", "reserved"]
    assert dispatch.status(reservation_id).reservation["state"] == "reinstall"
    assert computer_domains("vcl-vcld-re") == first
    assert _module_warnings(site) == []


def test_vcld_load_of_an_image_that_exists_nowhere(db, site, vcld, start_worker):
    """does_image_exist 0 and retrieve_image 0: vcld fails the request, the computer stays
    available, no load is started."""
    start_worker("node-a")
    computer = Computer(134, "vcl-vcld-missing.lab.test", "52:54:00:aa:86:01", None)
    image = "linux-VclVcldMissing-836-v0"
    reservation_id = request(db, 5136, computer, 836, image, "reload")
    vcld()

    failed = vcl_real.watch(db, 5136, reservation_id, 134, ended, 180)
    show("reload of an image that exists nowhere", failed)
    assert failed.request_states == ["pending/reload", "failed/reload"]
    assert failed.computer_states == ["reloading", "available"]
    assert "startload" not in failed.names() and "failed" in failed.names()
    assert any(
        f"{image} is not on VM host node-a nor in its repository" in w
        for w in vcl_real.warnings(site.log_lines())
    )


@pytest.mark.slow  # boots the test guest
def test_vcld_load_whose_os_post_load_fails(
    db, site, vcld, guest_image, start_worker, cleanup_computers
):
    """vclvirt's load succeeds, the OS module's post_load fails: load() is false, vcld writes
    loadimagefailed and sets request and computer 'failed'."""
    cleanup_computers.append("vcl-vcld-pl")
    start_worker("node-a")
    computer = Computer(135, "vcl-vcld-pl.lab.test", "52:54:00:aa:87:01", None)
    reservation_id = request(db, 5137, computer, 900, guest_image, "reload")
    vcld(VCLVIRT_TEST_POST_LOAD="fail")

    done = vcl_real.watch(db, 5137, reservation_id, 135, ended, 300)
    show("reload whose OS post_load fails", done)
    names = done.names()
    assert names.index("startvm") < names.index("loadimagefailed"), names
    assert done.request_states == ["pending/reload", "failed/reload"]
    assert done.computer_states == ["reloading", "failed"]
    assert any("the OS module's post_load failed" in w for w in vcl_real.warnings(site.log_lines()))


def test_vcld_with_the_api_unreachable(db, site, vcld):
    """Nothing answers at api_url: the calls fail when their deadlines pass, naming the API;
    vcld fails the request as for a missing image, the computer stays available."""
    site.write(
        api_url=f"http://127.0.0.1:{free_port()}",
        operation_timeout=3,
        image_query_timeout=3,
        load_timeout=3,
    )
    computer = Computer(138, "vcl-vcld-down.lab.test", "52:54:00:aa:8a:01", None)
    reservation_id = request(db, 5140, computer, 900, "linux-VclVcldDown-900-v0", "reload")
    vcld()

    down = vcl_real.watch(db, 5140, reservation_id, 138, ended, 180)
    show("reload with the API down", down)
    assert down.request_states == ["pending/reload", "failed/reload"]
    assert down.computer_states == ["reloading", "available"]
    assert "startload" not in down.names()
    warned = vcl_real.warnings(site.log_lines())
    assert any("node_status" in w and "cannot reach vclvirt's API" in w for w in warned)
    assert any("cannot query image" in w and "cannot reach vclvirt's API" in w for w in warned)
    # retrieve_image, which vcld calls next, does not claim that the image is missing
    assert any(
        "not loading linux-VclVcldDown-900-v0: vclvirt could not say whether" in w for w in warned
    )
    assert not [w for w in warned if "nor in its repository; vclvirt does not copy" in w]


def test_vcld_while_an_operation_of_the_reservation_is_running(
    db, site, vcld, guest_image, start_worker
):
    """An earlier load of the same reservation is still queued (no worker for its host):
    node_status and load wait for it until their deadlines, then fail; vcld writes
    loadimagefailed and sets request and computer 'failed'. The earlier load (of an image
    that exists nowhere) ends once a worker comes."""
    site.write(operation_timeout=3, load_timeout=3)
    start_worker("node-a")
    computer = Computer(139, "vcl-vcld-busy.lab.test", "52:54:00:aa:8b:01", None)
    reservation_id = request(db, 5141, computer, 900, guest_image, "reload")
    earlier = make_reservation(
        reservation_id, "vcl-vcld-busy", "linux-VclVcldBusy-839-v0", host="node-b"
    )
    dispatch.load(earlier)
    vcld()

    busy = vcl_real.watch(db, 5141, reservation_id, 139, ended, 180)
    show("reload while an earlier operation runs", busy)
    log = vcl_real.warnings(site.log_lines())
    assert any("node_status" in w and "an earlier operation of reservation" in w for w in log)
    assert any("failed to load" in w and "an earlier operation of reservation" in w for w in log)
    assert "loadimagefailed" in busy.names() and "transfervm" not in busy.names()
    assert busy.request_states == ["pending/reload", "failed/reload"]
    assert busy.computer_states == ["reloading", "failed"]

    start_worker("node-b")
    wait_for(
        lambda: (r := dispatch.status(reservation_id)) is not None and r.state == "failed",
        120,
        "the earlier load to end on node-b",
    )


@pytest.mark.slow  # boots the test guest
def test_vcld_image_request_captures_under_vcls_own_name(
    db, site, vcld, guest_image, testbed, start_worker, cleanup_computers
):
    """image.pm captures a loaded computer into a new image named as VCL's web front end
    names it (`<os>-<PrettyName><id>-v0`, no dash before the id): vclvirt writes that very
    name, image.name and imagerevision.imagename are left as VCL set them (type qcow2), the
    request completes, and the reload request image.pm inserts loads the captured image."""
    cleanup_computers.append("vcl-vcld-cap")
    captured = "vclvirttestguest-VcldCapture936-v0"
    _remove_image(testbed, captured)
    start_worker("node-a")
    computer = Computer(136, "vcl-vcld-cap.lab.test", "52:54:00:aa:88:01", None)
    reservation_id = request(db, 5150, computer, 900, guest_image, "reload")
    vcld()
    loaded = vcl_real.watch(db, 5150, reservation_id, 136, ended, 300)
    assert loaded.request_states == ["pending/reload", "complete/reload"], loaded

    try:
        vcl_real.add_image(db, 936, captured, "Vcld Capture", {0: captured}, vcl_real.TEST_OS)
        with db.cursor() as cursor:  # the web front end's new image: type as the base's
            cursor.execute("UPDATE image SET imagetypeid = 6 WHERE id = 936")
        reservation_id = 6151
        vcl_real.add_request(
            db,
            5151,
            reservation_id,
            computer_id=136,
            image_id=936,
            imagerevision_id=93600,
            state="image",
            forimaging=True,
        )
        image = vcl_real.watch(db, 5151, reservation_id, 136, ended, 600)
        show("image", image)
        assert image.request_states == ["pending/image", "complete/image"], image
        with db.cursor() as cursor:
            cursor.execute(
                "SELECT i.name, r.imagename, t.name AS type FROM image i"
                " JOIN imagerevision r ON r.imageid = i.id JOIN imagetype t"
                " ON t.id = i.imagetypeid WHERE i.id = 936"
            )
            assert cursor.fetchone() == {"name": captured, "imagename": captured, "type": "qcow2"}
        assert dispatch.status(reservation_id).outcome["new_image"] == captured
        assert (testbed / "repository" / captured / f"{captured}.qcow2").exists()

        with db.cursor() as cursor:  # the reload image.pm inserted for the computer
            cursor.execute(
                "SELECT requestid, id FROM reservation WHERE computerid = 136 AND id <> %s",
                (reservation_id,),
            )
            (reload,) = cursor.fetchall()
        again = vcl_real.watch(db, reload["requestid"], reload["id"], 136, ended, 300)
        show("the reload image.pm inserted", again)
        assert again.request_states == ["pending/reload", "complete/reload"], again
        assert again.final["current_image"] == captured
        assert "startvm" in again.names()
        assert _module_warnings(site) == []
    finally:
        _remove_image(testbed, captured)


def _remove_image(testbed: Path, name: str) -> None:
    for path in [*testbed.glob(f"hosts/*/images/{name}.*"), testbed / "repository" / name]:
        subprocess.run(["rm", "-rf", str(path)], check=True)
