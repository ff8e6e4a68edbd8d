"""`vclvirt sweep`: what no record owns on a host, named the way VCL names it — domains,
overlays, domain XML files and `.part` files — listed, and with `--remove` removed.

1. **Busy computers.** A computer C is busy while its lock (`computer:<host>:C`) is
   held, any reservation of C on the host has an operation in flight (its record is not
   final), or the lease of C's owner is held. Nothing of a busy computer is listed: a
   load may be making or removing it right now.
2. **What a computer owns.** Otherwise C owns the names (naming.LoadNames: domain,
   overlay and XML file base) of
   - the reservation whose image C holds (`computer_image`, written by post_load: the
     READY guest), unless C holds "noimage" (after an unload);
   - its owner (`computer_owner`, its latest load or capture; a failed one is kept for
     `vclvirt retry`), unless the owner's last operation emptied the computer.
   When C holds an image for a reservation whose record has expired (a reservation that
   outlived the record TTL) its names cannot be told: all of C is owned, as when busy.
3. **What is listed**, when not owned:
   - *domain*: named `C_<pretty>_IID-vR` or `C_IID-vR` (naming.computer_of_domain). The
     short forms and the older `C:…` are never listed: by name they could be anyone's,
     like any other name (`my-build-vm`);
   - *overlay*: `<vm_path>/C_IID-vR.<ext>` that is a qcow2 backed by a file in the
     datastore, as create_overlay makes them (a master, or a file that only looks like
     an overlay, is not one), and that no kept domain has as a disk;
   - *xml*: `<xml_dir>/C_IID-vR.xml`;
   - *part*: `<datastore>/<name>.part` left by a copy (images.copy), older than the
     grace, whose copy does not hold its lock (`.<image>.lock`) now; and
     `<vm_path or xml_dir>/C_IID-vR.<ext>.part` left by a write, as well.
   A master — anything else in the datastore — and the repository are never touched.
   The records judged are vclvirt's: a vcld managing the same host is not asked.
4. **Removing** (`--remove`), per computer: take C's lock (fenced, locks.py) at once or
   leave C alone; under it, read ownership and the host again and judge anew; remove
   behind C's fencing token (node/fence.py), so that a load which takes C after a pause
   of ours finds our commands refused; let go. Domains go through Cleanup.delete_domain
   (snapshots, own overlays), files through the host's files. A datastore `.part` is
   removed only under its copy's lock, taken at once or not at all, its age checked
   again there. Each removal is logged (`sweep_removed`).
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import redis
import structlog
from pydantic import ValidationError

from vclvirt.cancellation import Cancelled
from vclvirt.config.inventory import HostConfig
from vclvirt.hypervisor.connection import release_fenced
from vclvirt.locks import ResourceLock
from vclvirt.models import parse_reservation
from vclvirt.naming import LoadNames, computer_of_domain, parse_file_base
from vclvirt.node import fence
from vclvirt.node.fence import HostFence
from vclvirt.provisioning.cleanup import is_own_overlay
from vclvirt.provisioning.host import Host
from vclvirt.provisioning.leftovers import Listing
from vclvirt.state import keys
from vclvirt.state.computers import NO_IMAGE, ComputerImages, ComputerOwners
from vclvirt.state.records import RecordStore, ReservationStatus

log = structlog.get_logger(__name__)

DEFAULT_GRACE = 3600.0  # seconds a `.part` must be untouched before it is stale
EMPTYING = frozenset({"unload", "post_maintenance_action"})  # operations/computer.py


@dataclass(frozen=True)
class Claim:
    """What one computer owns on its host: everything (`whole` says why), or these names."""

    summary: str
    whole: bool = False
    domains: frozenset[str] = frozenset()
    bases: frozenset[str] = frozenset()


@dataclass
class Orphan:
    """One thing on a host that no record owns; `outcome` is set by a removal."""

    host: str
    kind: str  # domain | overlay | xml | part
    name: str  # the domain's name or the file's path
    computer: str | None
    why: str
    outcome: str | None = field(default=None)

    def line(self) -> str:
        done = f"\t{self.outcome}" if self.outcome else ""
        return f"{self.host}\t{self.kind}\t{self.name}{done}\t{self.why}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))


class Ownership:
    """Reads, for one host, what each computer owns (1 and 2 above); a computer lock
    held by `me` (the sweep itself, judging again under it) does not make it busy."""

    def __init__(self, client: redis.Redis, host: HostConfig, me: str) -> None:
        self.redis, self.host, self.me = client, host, me
        self.records = RecordStore(client)

    def claims(self, computers: Iterable[str]) -> dict[str, Claim]:
        in_flight: dict[str, str] = {}
        for rid in self.records.in_flight(self.host.name):
            record = self.records.get(rid)
            if record is not None and not record.finished:
                why = f"reservation {rid} is {record.state} ({record.operation})"
                in_flight.setdefault(record.computer, why)
        return {c: self._claim(c, in_flight.get(c)) for c in sorted(set(computers))}

    def _claim(self, computer: str, in_flight: str | None) -> Claim:
        host = self.host.name
        held = self.redis.get(keys.lock(computer_lock(host, computer)))
        if held is not None and _text(held) != self.me:
            return Claim(f"{computer} is busy (its lock is held)", whole=True)
        if in_flight is not None:
            return Claim(f"{computer} is busy ({in_flight})", whole=True)
        owner = ComputerOwners(self.redis).owner_of(host, computer)
        if owner is not None and self.redis.get(keys.lease(owner)) is not None:
            return Claim(f"{computer} is busy (reservation {owner} holds its lease)", whole=True)
        owned: list[tuple[ReservationStatus, LoadNames]] = []
        image = ComputerImages(self.redis).get(host, computer) or {}
        holds = image.get("image", NO_IMAGE["image"]) != NO_IMAGE["image"]
        if holds:
            found = self._names(image.get("reservation_id"))
            if found is None:
                why = (
                    f"{computer} holds {image.get('image')} for reservation "
                    f"{image.get('reservation_id')}, whose record is gone: its names are unknown"
                )
                return Claim(why, whole=True)
            owned.append(found)
        mine = self._names(owner) if owner is not None else None
        if mine is not None and mine[0].operation not in EMPTYING:
            owned.append(mine)
        if not owned:
            empty = "holds no image" if image else "was never loaded here"
            return Claim(f"no record owns {computer}; it {empty}")
        shown = ", ".join(
            f"{names.domain} (reservation {record.reservation_id}, {record.state})"
            for record, names in owned
        )
        return Claim(
            f"{computer} owns {shown} only",
            domains=frozenset(names.domain for _, names in owned),
            bases=frozenset(names.base for _, names in owned),
        )

    def _names(self, reservation_id: object) -> tuple[ReservationStatus, LoadNames] | None:
        """The reservation's record with its names on this host; None without a record."""
        if not isinstance(reservation_id, int | str) or not str(reservation_id).isdigit():
            return None
        record = self.records.get(int(reservation_id))
        if record is None:
            return None
        try:
            reservation = parse_reservation(record.reservation)
        except (ValidationError, ValueError):
            return None
        names = LoadNames.for_reservation(
            reservation,
            datastore_path=self.host.datastore_path,
            vm_path=self.host.vm_dir,
            xml_dir=self.host.xml_dir,
        )
        return record, names


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def computer_lock(host: str, computer: str) -> str:
    """The resource name of a computer's lock (the one a run takes: holdings.py)."""
    return f"computer:{host}:{computer}"


def computers_named(listing: Listing) -> set[str]:
    """The computers whose names the host's domains and files carry."""
    found = {c for name in listing.domains if (c := computer_of_domain(name))}
    for item in listing.files:
        stem = posixpath.basename(item.path).removesuffix(".part")
        parsed = parse_file_base(posixpath.splitext(stem)[0])
        if parsed:
            found.add(parsed[0])
    return found


def judge(
    host: HostConfig,
    listing: Listing,
    claims: dict[str, Claim],
    grace: float,
    is_overlay: Callable[[str], bool],
) -> list[Orphan]:
    """What no record owns (3 above), domains first; `is_overlay` reads a file's facts."""
    found: list[Orphan] = []
    orphan_domains = set()
    for name in sorted(listing.domains):
        computer = computer_of_domain(name)
        claim = claims.get(computer) if computer else None
        if computer and claim and not claim.whole and name not in claim.domains:
            orphan_domains.add(name)
            found.append(Orphan(host.name, "domain", name, computer, claim.summary))
    kept = {
        d for name, disks in listing.domains.items() if name not in orphan_domains for d in disks
    }
    for item in sorted(listing.files, key=lambda f: f.path):
        directory, name = posixpath.split(item.path)
        stem = name.removesuffix(".part")
        parsed = parse_file_base(posixpath.splitext(stem)[0])
        claim = claims.get(parsed[0]) if parsed else None
        if stem != name:
            if item.age <= grace or item.path in listing.copying:
                continue
            age = f"untouched for {item.age:.0f}s"
            if directory == host.datastore_path:
                found.append(Orphan(host.name, "part", item.path, None, f"left by a copy, {age}"))
            elif parsed and claim and not claim.whole:
                found.append(
                    Orphan(host.name, "part", item.path, parsed[0], f"{age}; {claim.summary}")
                )
            continue
        if not parsed or not claim or claim.whole or posixpath.splitext(stem)[0] in claim.bases:
            continue
        if directory == host.xml_dir and name.endswith(".xml"):
            found.append(Orphan(host.name, "xml", item.path, parsed[0], claim.summary))
        elif (
            is_own_overlay(item.path, parsed[0], host.vm_dir)
            and not name.endswith(".xml")
            and item.path not in kept
            and is_overlay(item.path)
        ):
            found.append(Orphan(host.name, "overlay", item.path, parsed[0], claim.summary))
    return found


class Sweep:
    """Lists and removes one host's orphans, as the module docstring says."""

    def __init__(
        self,
        client: redis.Redis,
        host: Host,
        *,
        grace: float = DEFAULT_GRACE,
        lock_ttl: float = 30.0,
    ) -> None:
        self.redis, self.host, self.grace, self.lock_ttl = client, host, grace, lock_ttl
        self.owner = f"sweep|{os.uname().nodename}|{os.getpid()}"
        self.ownership = Ownership(client, host.config, self.owner)

    def find(self) -> list[Orphan]:
        return self._judged()[0]

    def _judged(self) -> tuple[list[Orphan], Listing, dict[str, Claim]]:
        leftovers = self.host.leftovers
        listing = leftovers.listing()
        claims = self.ownership.claims(computers_named(listing))
        found = judge(self.host.config, listing, claims, self.grace, leftovers.is_overlay)
        return found, listing, claims

    def remove(self, orphans: list[Orphan]) -> list[Orphan]:
        """Each orphan with its outcome: removed, or why it was left."""
        for part in (o for o in orphans if o.kind == "part" and o.computer is None):
            part.outcome = self.host.leftovers.remove_part(part.name, self.grace)
            self._logged(part)
        for computer in sorted({o.computer for o in orphans if o.computer}):
            self._remove_computer(computer, [o for o in orphans if o.computer == computer])
        return orphans

    def _remove_computer(self, computer: str, listed: list[Orphan]) -> None:
        config = self.host.config
        lock = ResourceLock(
            self.redis,
            computer_lock(config.name, computer),
            self.owner,
            ttl=self.lock_ttl,
            fenced=True,
        )
        if not lock.acquire(wait=0):
            for orphan in listed:
                orphan.outcome = f"left: {computer} became busy"
            return
        try:
            assert lock.token is not None
            held = HostFence(config.name, f"{config.fence_dir}/{computer}", lock.token, 0)
            with fence.holding(held):
                self._remove_under_lock(computer, listed)
        except Cancelled:  # the host refused our token: a newer holder took the computer
            for orphan in (o for o in listed if o.outcome is None):
                orphan.outcome = f"left: {computer} was taken meanwhile (fenced)"
                self._logged(orphan)
        finally:
            release_fenced(config.name)
            lock.release()

    def _remove_under_lock(self, computer: str, listed: list[Orphan]) -> None:
        """Judged again under the lock: only what is still an orphan goes."""
        found, listing, claims = self._judged()
        now = {(o.kind, o.name) for o in found if o.computer == computer}
        gone = {name for kind, name in now if kind == "domain"}
        claim = claims[computer]
        # disks of the domains that stay, and the owned overlays (whoever has them as disk)
        keep = {d for name, disks in listing.domains.items() if name not in gone for d in disks}
        keep |= {
            d
            for name in gone
            for d in listing.domains[name]
            if posixpath.splitext(posixpath.basename(d))[0] in claim.bases
        }
        leftovers, with_domains = self.host.leftovers, set()
        for orphan in sorted(listed, key=lambda o: o.kind != "domain"):
            if (orphan.kind, orphan.name) not in now:
                again = claim.summary if claim.whole else "no longer an orphan"
                orphan.outcome = f"left: judged again under the lock: {again}"
            elif orphan.kind == "domain":
                with_domains |= set(leftovers.remove_domain(orphan.name, computer, sorted(keep)))
                orphan.outcome = "removed"
            elif leftovers.remove_file(orphan.name) or orphan.name in with_domains:
                orphan.outcome = "removed"
            else:
                orphan.outcome = "gone"
            self._logged(orphan)

    def _logged(self, orphan: Orphan) -> None:
        event = "sweep_removed" if orphan.outcome == "removed" else "sweep_left"
        log.info(
            event,
            host=orphan.host,
            kind=orphan.kind,
            name=orphan.name,
            computer=orphan.computer,
            why=orphan.why,
            outcome=orphan.outcome,
        )
