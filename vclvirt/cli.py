"""`vclvirt` command line: run a host's worker, enqueue loads, read status.

The commands import `dispatch`, `api` and `composition` when they run, not here: those
import prometheus_client, which picks its multiprocess mode when first imported, and
`vclvirt worker` must set the metrics directory before that.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import uvicorn
from kombu.exceptions import OperationalError
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from vclvirt.api_guard import MIN_TOKEN_LENGTH, api_token, is_loopback
from vclvirt.config.inventory import HostConfig, get_inventory
from vclvirt.config.secrets import MASK, known_secrets, masked_url
from vclvirt.config.settings import get_settings
from vclvirt.errors import (
    BrokerUnreachable,
    InvalidInput,
    ResourceBusy,
    UnknownHost,
    UnknownReservation,
    VclvirtError,
)
from vclvirt.identity import Identity
from vclvirt.models import MAX_DOCUMENT_BYTES, check_image_name
from vclvirt.operations import OPERATIONS
from vclvirt.operations import operation as find_operation
from vclvirt.state.client import redis_client
from vclvirt.state.machine import State
from vclvirt.state.records import ReservationStatus
from vclvirt.workers.logging import configure_logging
from vclvirt.workers.routing import CONTROL_QUEUE, host_queue

app = typer.Typer(
    pretty_exceptions_enable=False,
    add_completion=False,
    no_args_is_help=True,
    help="Distributed VM provisioning for lab reservations on KVM hosts.",
)


@app.callback()
def main(
    inventory: Annotated[
        Path | None, typer.Option(help="Host inventory TOML (default: $VCLVIRT_INVENTORY)")
    ] = None,
    json_logs: Annotated[bool, typer.Option(help="Log structured JSON to stdout")] = False,
) -> None:
    if inventory is not None:
        os.environ["VCLVIRT_INVENTORY"] = str(inventory.resolve())
        get_settings.cache_clear()

    # Library warnings go through the redacting formatter too, to stderr unless --json-logs.
    if json_logs:
        configure_logging(json=True)
    else:
        configure_logging(json=False, level="WARNING", stream=sys.stderr)


# Exit codes (README, "CLI"): 0 success, 1 the operation failed, 2 invalid input,
# 3 timed out waiting, 4 unknown reservation, 5 broker unreachable, 6 busy, 7 orphans listed.
EXIT_FAILED, EXIT_INVALID, EXIT_TIMEOUT, EXIT_UNKNOWN, EXIT_BROKER, EXIT_BUSY = 1, 2, 3, 4, 5, 6
EXIT_ORPHANS = 7


def exit_code_of(error: VclvirtError) -> int:
    """The documented exit code for an error raised before or while enqueueing."""
    if isinstance(error, UnknownReservation):
        return EXIT_UNKNOWN
    if isinstance(error, ResourceBusy):
        return EXIT_BUSY
    if isinstance(error, BrokerUnreachable):
        return EXIT_BROKER
    if isinstance(error, InvalidInput | UnknownHost):
        return EXIT_INVALID
    return EXIT_FAILED


def _fail(error: VclvirtError, code: int | None = None) -> NoReturn:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(exit_code_of(error) if code is None else code)


@app.command()
def worker(
    host: Annotated[
        list[str],
        typer.Option(
            help="Inventory name of the host this worker serves (repeat to serve several, "
            "e.g. hosts reached locally in a simulation)"
        ),
    ],
    concurrency: Annotated[
        int | None,
        typer.Option(
            help="Worker processes (default: the sum of the served hosts' "
            f"max_concurrent_loads, at most {DEFAULT_CONCURRENCY_CAP})"
        ),
    ] = None,
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Run a Celery worker that consumes only its host's queue (and the control queue)."""
    try:
        configs = [get_inventory().host(name) for name in host]
    except VclvirtError as error:
        _fail(error, 2)
    settings = get_settings()
    if settings.metrics_port:
        _serve_worker_metrics(settings.metrics_port, host)
    # After the metrics directory is set: composition imports prometheus_client.
    from vclvirt import composition

    root = composition.install(composition.Root(settings, Identity.worker(host)))
    node = root.identity.node
    celery_app = root.app
    celery_app.worker_main(
        [
            "worker",
            "--queues",
            ",".join([*(host_queue(name) for name in host), CONTROL_QUEUE]),
            "--hostname",
            node,
            "--concurrency",
            str(concurrency or default_concurrency(configs)),
            "--pool",
            "prefork",
            "--loglevel",
            loglevel,
            "--events",
            "--without-mingle",
            "--without-gossip",
        ]
    )


# Pool processes cost ~25-31 MB each (docs/benchmarks.md, benchmark 7): 64 stay within
# 2 GiB; past it a worker serving many hosts shares them (give --concurrency to change).
DEFAULT_CONCURRENCY_CAP = 64


def default_concurrency(configs: list[HostConfig]) -> int:
    """Enough pool processes for every served host to run up to its own limit at once, so
    a slow or dead host holds only its own share (runs that find their host full wait
    outside the worker); capped, so a worker serving a hundred hosts stays small."""
    return min(DEFAULT_CONCURRENCY_CAP, sum(config.max_concurrent_loads for config in configs))


def _serve_worker_metrics(port: int, hosts: list[str]) -> None:
    """Metrics of all pool processes, merged: the directory must be set before
    prometheus_client is first imported, which is why this runs before the app loads."""
    directory = tempfile.mkdtemp(prefix=f"vclvirt-metrics-{hosts[0]}-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    from vclvirt.metrics import serve_metrics

    serve_metrics(port, redis_client(get_settings().broker_url), hosts)


def _read_reservation(path: str) -> bytes:
    """The file's bytes (at most one past the document limit): decoding and every other
    check is the same strict reader the API uses (models.load_json_document)."""
    limit = MAX_DOCUMENT_BYTES + 1
    try:
        if path == "-":
            return sys.stdin.buffer.read(limit)
        with Path(path).open("rb") as file:
            return file.read(limit)
    except OSError as error:
        typer.echo(f"error: cannot read {path}: {error.strerror or error}", err=True)
        raise typer.Exit(EXIT_INVALID) from None


def _step_line(step: dict[str, Any]) -> str:
    mark = {
        "succeeded": "ok",
        "failed": "FAILED",
        "superseded": "SUPERSEDED",
        "running": "..",
        "retrying": "retry",
        "skipped": "skipped",
    }.get(step.get("state", ""), step.get("state", ""))
    duration = f"{step['duration_s']:.2f}s" if step.get("duration_s") is not None else ""
    return f"  {step['name']:<24} {mark:<10} {duration}"


def _progress_bar(step: dict[str, Any]) -> str | None:
    progress = step.get("progress") or {}
    total, done = progress.get("total_bytes"), progress.get("done_bytes")
    if not total or done is None:
        return None
    filled = int(30 * done / total)
    return (
        f"  {step['name']:<24} [{'#' * filled}{'.' * (30 - filled)}] "
        f"{100 * done / total:5.1f}% {done / 2**20:,.0f}/{total / 2**20:,.0f} MiB"
    )


def _follow(handle: Any, timeout: float) -> ReservationStatus:
    """Print each step as it ends (and copy progress), until the operation finishes."""
    printed: set[tuple[str, str]] = set()
    last_bar: dict[str, int] = {}
    tty = sys.stdout.isatty()

    def show(current: ReservationStatus) -> None:
        for step in current.to_dict()["steps"]:
            key = (step["name"], step.get("state", "pending"))
            bar = _progress_bar(step) if step.get("state") == "running" else None
            if bar is not None:
                tenth = int(10 * step["progress"]["done_bytes"] / step["progress"]["total_bytes"])
                if tty:
                    typer.echo("\r" + bar, nl=False)
                elif last_bar.get(step["name"]) != tenth:
                    typer.echo(bar)
                last_bar[step["name"]] = tenth
            if step.get("state") in _ENDED and key not in printed:
                printed.add(key)
                typer.echo(("\r" if tty and step["name"] in last_bar else "") + _step_line(step))

    try:
        return handle.wait(timeout=timeout, on_change=show)  # type: ignore[no-any-return]
    except TimeoutError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(3) from None


_ENDED = ("succeeded", "failed", "superseded", "retrying", "skipped")


def _submit(enqueue: Any, reservation: str | None, wait: bool, timeout: float, verb: str) -> None:
    document = _read_reservation(reservation) if reservation else None
    try:
        handle = enqueue(document)
    except VclvirtError as error:
        _fail(error)
    typer.echo(handle.reservation_id)
    if not wait:
        return
    final = _follow(handle, timeout)
    if final.state != State.SUCCEEDED:
        failure = final.error or {}
        typer.echo(
            f"error: reservation {final.reservation_id} {final.state} at step "
            f"{final.failed_step}: [{failure.get('code')}] {failure.get('message')}. "
            f"{failure.get('hint', '')}",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(f"reservation {final.reservation_id} {verb} on {final.host}")
    if final.outcome:
        typer.echo(json.dumps(final.outcome))


@app.command()
def load(
    reservations: Annotated[
        list[str],
        typer.Argument(
            help="Reservation JSON file(s), or - for stdin; several are validated together "
            "before any is enqueued"
        ),
    ],
    wait: Annotated[bool, typer.Option(help="Follow the steps until the load ends")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait")] = 3600.0,
) -> None:
    """Enqueue a load; prints the reservation id (one line per file)."""
    from vclvirt import dispatch

    if len(reservations) == 1:
        _submit(dispatch.load, reservations[0], wait, timeout, "loaded")
        return
    if wait:
        typer.echo("error: --wait follows one load; give one file", err=True)
        raise typer.Exit(EXIT_INVALID)
    documents = [_read_reservation(path) for path in reservations]
    try:
        answers = dispatch.load_many(documents)
    except VclvirtError as error:  # one invalid file: nothing was enqueued
        _fail(error)
    worst = 0
    for path, answer in zip(reservations, answers, strict=True):
        if isinstance(answer, VclvirtError):
            typer.echo(f"error: {path}: {answer}", err=True)
            worst = max(worst, exit_code_of(answer))
        else:
            typer.echo(answer.reservation_id)
    raise typer.Exit(worst)


@app.command()
def capture(
    reservation: Annotated[
        str, typer.Argument(help="Reservation JSON (state image or checkpoint)")
    ],
    wait: Annotated[bool, typer.Option(help="Follow the steps until the capture ends")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait")] = 7200.0,
) -> None:
    """Enqueue a capture: the computer's disk becomes a new master (and repository) image."""
    from vclvirt import dispatch

    _submit(dispatch.capture, reservation, wait, timeout, "captured")


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@app.command()
def status(
    reservation_id: int,
    as_json: Annotated[bool, typer.Option("--json", help="Print the record as JSON")] = False,
) -> None:
    """State, current or failed step, per-step timings and the error of a reservation."""
    from vclvirt import dispatch

    record = dispatch.status(reservation_id)
    if record is None:
        typer.echo(f"error: no status for reservation {reservation_id}", err=True)
        raise typer.Exit(4)
    data = record.to_dict()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(
        f"reservation {reservation_id}: {data['state']} ({data['operation']} of "
        f"{data['computer']} on {data['host']}, queued {_when(data['queued_at'])})"
    )
    if data["computer_image"]:
        typer.echo(f"computer holds: {data['computer_image']['image']}")
    if data["outcome"]:
        typer.echo(f"outcome: {json.dumps(data['outcome'])}")
    if data["current_step"]:
        typer.echo(f"current step: {data['current_step']}")
    if data["waiting"]:
        waiting = data["waiting"]
        fails = (
            f"; fails at {_when(waiting['fails_at'])} unless a worker takes it"
            if waiting.get("fails_at")
            else ""
        )
        if waiting.get("abandoned"):
            fails = (
                f"; abandoned since {_when(waiting['fails_at'])}: the next reconcile of a "
                "worker fails it (NO_WORKER)"
            )
        since = f" since {_when(waiting['since'])}" if waiting.get("since") else ""
        typer.echo(f"waiting: {waiting['reason']}{since}{fails}")
    for step in data["steps"]:
        typer.echo(_step_line(step))
    if data["error"]:
        e = data["error"]
        typer.echo(
            f"failed step: {data['failed_step']}\nerror: [{e['code']}] {e['message']}. "
            f"{e.get('hint', '')}"
        )
    for earlier in reversed(data["history"]):
        failure = (
            f" at {earlier['failed_step']} [{earlier['error_code']}]"
            if earlier.get("failed_step")
            else ""
        )
        typer.echo(
            f"earlier: {earlier['operation']} {earlier['state']}{failure}, "
            f"finished {_when(earlier.get('finished_at'))}"
        )
    if State.ended_badly(data["state"]):
        raise typer.Exit(1)


def _operate(
    reservation: str,
    operation: str,
    timeout: float,
    params: dict[str, Any] | None = None,
    *,
    step: str | None = None,
) -> dict[str, Any]:
    """Enqueue one operation, wait for it, exit non-zero with the error if it failed."""
    from vclvirt import dispatch

    document = _read_reservation(reservation)
    try:
        handle = dispatch.run(document, operation, params)
        final = handle.wait(timeout=timeout)
    except VclvirtError as error:
        _fail(error)
    except TimeoutError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(EXIT_TIMEOUT) from None
    if final.state != State.SUCCEEDED:
        failure = final.error or {}
        typer.echo(
            f"error: {operation} failed: [{failure.get('code')}] "
            f"{failure.get('message')}. {failure.get('hint', '')}",
            err=True,
        )
        raise typer.Exit(1)
    result: dict[str, Any] = final.step_records[step or operation].get("result", {})
    return result


ReservationFile = Annotated[str, typer.Argument(help="Reservation JSON file, or - for stdin")]
Timeout = Annotated[float, typer.Option(help="Seconds to wait for the worker")]


@app.command("node-status")
def node_status(
    reservation: ReservationFile,
    timeout: Timeout = 120.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """READY, POST_LOAD or RELOAD for the reservation's computer (and why)."""
    result = _operate(reservation, "node_status", timeout)
    typer.echo(json.dumps(result) if as_json else f"{result['status']}: {result['reason']}")


class PowerAction(StrEnum):
    status = "status"
    on = "on"
    off = "off"
    reset = "reset"


@app.command()
def power(action: PowerAction, reservation: ReservationFile, timeout: Timeout = 300.0) -> None:
    """Power status / on / off (ACPI, then destroy) / reset of the reservation's domain."""
    result = _operate(reservation, f"power_{action.value}", timeout)
    typer.echo(
        f"{result.get('domain')}: {result.get('power')}"
        + (f" ({result['method']} in {result['seconds']}s)" if "method" in result else "")
    )


@app.command()
def unload(reservation: ReservationFile, timeout: Timeout = 300.0) -> None:
    """Delete the computer's domains and overlays; it then holds no image."""
    result = _operate(reservation, "unload", timeout)
    typer.echo(f"unloaded: {', '.join(result['deleted_domains']) or 'no domain'}")


@app.command()
def maintenance(reservation: ReservationFile, timeout: Timeout = 300.0) -> None:
    """post_maintenance_action: like unload, for a computer going to maintenance."""
    result = _operate(reservation, "post_maintenance_action", timeout)
    typer.echo(f"cleared for maintenance: {', '.join(result['deleted_domains']) or 'no domain'}")


def run() -> None:
    """Console entry point: the commands, with unreachable services reported in one line."""
    try:
        app()
    except ValidationError as error:  # the settings (VCLVIRT_*) are not valid
        problems = "; ".join(
            f"VCLVIRT_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in error.errors(include_input=False)
        )
        typer.echo(f"error: invalid configuration: {problems}", err=True)
        raise SystemExit(EXIT_INVALID) from None
    except (RedisConnectionError, RedisTimeoutError, OperationalError) as error:
        settings = get_settings()
        line = (
            f"error: cannot reach the broker at {masked_url(settings.broker_url)}: "
            f"{str(error).rstrip('.')}. "
            "Start Redis or set VCLVIRT_BROKER_URL."
        )
        for secret in known_secrets(settings):
            line = line.replace(secret, MASK)
        typer.echo(line, err=True)
        raise SystemExit(EXIT_BROKER) from None


class SnapshotAction(StrEnum):
    create = "create"
    list = "list"
    revert = "revert"
    delete = "delete"


@app.command()
def snapshot(
    action: SnapshotAction,
    reservation: ReservationFile,
    name: Annotated[str | None, typer.Option(help="Snapshot name (create/revert/delete)")] = None,
    timeout: Timeout = 600.0,
) -> None:
    """Snapshots of the reservation's domain, through libvirt."""
    operation = f"snapshot_{action.value}"
    if action is not SnapshotAction.list and not name:
        typer.echo(f"error: snapshot {action.value} needs --name", err=True)
        raise typer.Exit(EXIT_INVALID)
    try:
        params = find_operation(operation).check_params({"name": name} if name else None)
    except InvalidInput as error:
        _fail(error)
    result = _operate(reservation, operation, timeout, params or None)
    if action is SnapshotAction.list:
        for item in result["snapshots"]:
            created = _when(float(item["created"]))
            mark = " (current)" if item["current"] else ""
            typer.echo(f"{item['name']}\t{created}\t{item['state']}{mark}")
    else:
        done = {"create": "created", "revert": "reverted to", "delete": "deleted"}[action.value]
        typer.echo(f"{result['domain']}: snapshot {name} {done}")


def _params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _fail(InvalidInput(f"--param {pair!r}: give key=value", field="params"))
        params[key] = value
    return params


@app.command("op")
def op(
    name: Annotated[str, typer.Argument(help="The operation (vclvirt op --list)")] = "",
    reservation: Annotated[str, typer.Argument(help="Reservation JSON file, or -")] = "",
    param: Annotated[
        list[str] | None, typer.Option("--param", help="A parameter, key=value (repeat)")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Write the result's file (e.g. a screenshot) here")
    ] = None,
    timeout: Timeout = 600.0,
    list_them: Annotated[bool, typer.Option("--list", help="List the operations")] = False,
) -> None:
    """Any operation by name, with its parameters; prints the step's result as JSON."""
    if list_them or not name:
        for known in sorted(OPERATIONS.values(), key=lambda o: o.name):
            typer.echo(f"{known.name}\t{known.summary} ({known.params_description})")
        return
    try:
        chosen = find_operation(name)
        params = chosen.check_params(_params(param or []))
    except InvalidInput as error:
        _fail(error)
    if not reservation:
        _fail(
            InvalidInput("give the reservation's JSON file (or - for stdin)", field="reservation")
        )
    final = _operate(reservation, chosen.name, timeout, params or None, step=chosen.steps[-1].name)
    attached = final.get("file") if isinstance(final.get("file"), dict) else None
    if output is not None:
        if attached is None:
            _fail(InvalidInput(f"{chosen.name} returns no file to write", field="output"))
        output.write_bytes(base64.b64decode(attached["base64"]))
        final = {**final, "file": {k: v for k, v in attached.items() if k != "base64"}}
        final["file"]["written_to"] = str(output)
    typer.echo(json.dumps(final, indent=2))


images_app = typer.Typer(
    help="The image repository and the hosts' masters (runs over SSH "
    "from this machine, with the inventory's credentials)."
)
app.add_typer(images_app, name="images")
HostOption = Annotated[str, typer.Option("--host", help="Inventory name of the host")]


def _host_images(host: str, image: str | None = None) -> Any:
    """The host's image queries, once the image name (if any) has passed the image-name
    rule: nothing reaches the host before that."""
    try:
        if image is not None:
            check_image_name(image)
        from vclvirt import composition  # not at the top: see `worker`

        return composition.current().host(host).images
    except VclvirtError as error:
        _fail(error, EXIT_INVALID)


@images_app.command("exists")
def images_exists(image: str, host: HostOption) -> None:
    """Exit 0 and print 'yes' when the image is a master on the host or in the repository."""
    try:
        found = _host_images(host, image).exists(image)
    except VclvirtError as error:
        _fail(error, EXIT_FAILED)
    typer.echo("yes" if found else "no")
    raise typer.Exit(0 if found else 1)


@images_app.command("size")
def images_size(
    image: str,
    host: HostOption,
    in_bytes: Annotated[bool, typer.Option("--bytes", help="Bytes instead of MB")] = False,
) -> None:
    """Allocated size of the image (master on the host, else repository files), in MB."""
    try:
        images = _host_images(host, image)
        size = images.size_bytes(image) if in_bytes else images.size_mb(image)
    except VclvirtError as error:
        _fail(error)
    typer.echo(size)


@images_app.command("list")
def images_list(host: HostOption, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Masters in the host's datastore and images in the repository."""
    try:
        found = _host_images(host).listing()
    except VclvirtError as error:
        _fail(error)
    if as_json:
        typer.echo(json.dumps(found))
        return
    for where, names in found.items():
        for name in names:
            typer.echo(f"{where}\t{name}")


def _stage_line(stage: dict[str, Any]) -> str:
    state = stage["state"]
    if state == "done":
        what = "copied from the repository" if stage["copied"] else "already on the host"
        return f"{stage['host']}: done, {what} ({stage['master']})"
    if state == "failed":
        error = stage["error"] or {}
        return f"{stage['host']}: FAILED [{error.get('code')}] {error.get('message')}"
    done, total = stage["done_bytes"], stage["total_bytes"]
    shown = f" {done / 2**20:.1f}/{total / 2**20:.1f} MiB ({done * 100 // total}%)" if total else ""
    return f"{stage['host']}: {state}{shown}"


@images_app.command("stage")
def images_stage(
    image: str,
    host: Annotated[
        list[str] | None, typer.Option("--host", help="Inventory name of a host (repeat)")
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="Every host of the inventory")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Follow until every stage ends")] = False,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait with --wait")] = 7200.0,
) -> None:
    """Put the image's master on hosts ahead of their loads (one line per host; a stage
    under way is joined). Exit 0 when every stage is queued (or, with --wait, done), 1 when
    one failed, 2 for a bad image name or unknown host (nothing staged), 3 on timeout."""
    from vclvirt import dispatch  # not at the top: see `worker`

    if bool(host) == every:
        typer.echo("error: name hosts with --host, or give --all", err=True)
        raise typer.Exit(EXIT_INVALID)
    try:
        found = dispatch.stage(image, host or ())
    except VclvirtError as error:
        _fail(error)
    shown = {name: _stage_line(stage.to_dict()) for name, stage in found.items()}
    for line in shown.values():
        typer.echo(line)
    deadline = time.monotonic() + timeout
    while wait and not all(stage.finished for stage in found.values()):
        if time.monotonic() > deadline:
            typer.echo(f"error: stages of {image} did not end within {timeout:.0f}s", err=True)
            raise typer.Exit(EXIT_TIMEOUT)
        time.sleep(1.0)
        found = dispatch.stages(image, list(found))
        for name, stage in found.items():
            line = _stage_line(stage.to_dict())
            if shown.get(name) != line:
                shown[name] = line
                typer.echo(line)
    if any(stage.state == "failed" for stage in found.values()):
        raise typer.Exit(EXIT_FAILED)


@app.command()
def sweep(
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="Inventory name of a host to sweep (repeat; default: all)"),
    ] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Remove what is listed")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line")] = False,
    grace: Annotated[
        float, typer.Option(min=0, help="Seconds a .part file must be untouched to be stale")
    ] = 3600.0,
) -> None:
    """What no record owns on each host (domains, overlays, XML and .part files named the
    way VCL names them), one line each: host, kind, name, [outcome,] why. Exit 0 when
    nothing is listed (or all of it was removed or left for a reason shown), 7 when orphans
    are listed without --remove, 1 when a host could not be swept, 2 for an unknown host,
    5 when Redis is unreachable."""
    from vclvirt import composition  # not at the top: see `worker`
    from vclvirt.sweep import Sweep

    try:
        names = host or sorted(get_inventory().hosts)
        for name in names:
            get_inventory().host(name)
    except VclvirtError as error:
        _fail(error, EXIT_INVALID)
    root, failed, listed = composition.current(), False, False
    for name in names:
        try:
            swept = Sweep(
                root.redis, root.host(name), grace=grace, lock_ttl=root.settings.lease_ttl
            )
            found = swept.find()
            if remove:
                swept.remove(found)
            listed = listed or bool(found)
        except (RedisConnectionError, RedisTimeoutError) as error:
            typer.echo(f"error: Redis is unreachable: {error}", err=True)
            raise typer.Exit(EXIT_BROKER) from None
        except VclvirtError as error:
            typer.echo(f"error: sweeping {name}: {error}", err=True)
            failed = True
            continue
        for orphan in found:
            typer.echo(orphan.to_json() if as_json else orphan.line())
    raise typer.Exit(EXIT_FAILED if failed else EXIT_ORPHANS if listed and not remove else 0)


@app.command()
def retry(
    reservation_id: int,
    from_step: Annotated[
        str | None, typer.Option(help="Step to start from (default: the step that failed)")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Follow the steps until it ends")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait")] = 3600.0,
) -> None:
    """Re-run a failed reservation from the step that failed, reusing earlier steps' results."""
    from vclvirt import dispatch

    _submit(lambda _: dispatch.retry(reservation_id, from_step), None, wait, timeout, "retried")


@app.command()
def failed(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    limit: Annotated[int, typer.Option(help="At most this many")] = 100,
) -> None:
    """Reservations whose last operation failed, most recent first, with step and error."""
    from vclvirt import dispatch

    records = dispatch.failed(limit)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in records], indent=2))
        return
    for record in records:
        error = record.error or {}
        typer.echo(
            f"{record.reservation_id}\t{record.operation}\t{record.host}\t"
            f"{record.computer}\t{record.failed_step}\t[{error.get('code')}] "
            f"{error.get('message')}\t{_when(record.finished_at)}"
            if record.state == State.FAILED
            else f"{record.reservation_id}\t{record.operation}\t{record.host}\t"
            f"{record.computer}\twaiting: {(record.waiting or {}).get('reason')}"
        )


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8080,
) -> None:
    """Serve the JSON HTTP API (OpenAPI at /openapi.json); needs VCLVIRT_API_TOKEN unless
    bound to loopback."""
    from vclvirt.api import create_api

    settings = get_settings()
    try:
        token = api_token(settings)
    except InvalidInput as error:
        _fail(error)
    if token is None and not is_loopback(host):
        typer.echo(
            f"error: refusing to serve on {host} without a token: set "
            f"VCLVIRT_API_TOKEN (at least {MIN_TOKEN_LENGTH} characters, e.g. "
            "`openssl rand -hex 32`), or bind to 127.0.0.1 for development",
            err=True,
        )
        raise typer.Exit(EXIT_INVALID)
    configure_logging(json=True)
    uvicorn.run(create_api(settings), host=host, port=port, log_config=None, access_log=False)


from vclvirt.vcl.cli import inventory_app  # noqa: E402  (the VCL lane's sub-app, kept apart)

app.add_typer(inventory_app, name="inventory")  # vclvirt inventory from-vcl
