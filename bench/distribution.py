"""3. Master distribution: a 1 GiB image (sparse, full) copied by vclvirt's pre_define to an
uncached host vs scp vs a local qemu-img convert; N concurrent loads of the uncached image."""

from __future__ import annotations

import time
from typing import Any

from bench import common
from bench.common import Context, median, table

HOST_IMAGES = common.TESTBED / "hosts" / "node-b" / "images"
VARIANTS = {  # name: (image, MiB of 0x5a data in the 1 GiB image)
    "sparse": (f"{common.IMAGE_PREFIX}Sparse-7003-v0", 10),
    "full": (f"{common.IMAGE_PREFIX}Full-7004-v0", 900),
}
SCP = [
    "scp",
    "-q",
    "-i",
    str(common.SSH_KEY),
    "-P",
    common.SSH_PORT_B,
    "-o",
    f"UserKnownHostsFile={common.KNOWN_HOSTS}",
    "-o",
    "BatchMode=yes",
]


def make_image(ctx: Context, name: str, mib: int) -> Any:
    source = ctx.workdir / f"{name}.qcow2"
    common.run(["qemu-img", "create", "-q", "-f", "qcow2", str(source), "1G"])
    common.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {mib}M", str(source)])
    return common.publish_image(name, source)


def uncache(image: str) -> None:
    common.remove_files(f"hosts/node-b/images/{image}*", f"hosts/node-b/images/.{image}*")


def vclvirt_copy(image: str, image_id: int) -> tuple[float, bool]:
    uncache(image)
    res = common.reservation("bench-m0", 450, image, host="node-b", image_id=image_id)
    (result,) = common.load_all([res])
    common.cleanup_computers("bench-m0")
    pre = result.step("pre_define")
    return float(pre["duration_s"]), bool(pre["result"]["master_copied"])


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    common.run(argv)
    return time.perf_counter() - started


def concurrent_uncached(image: str, image_id: int, n: int) -> list[Any]:
    uncache(image)
    batch = [
        common.reservation(f"bench-n{i}", 460 + i, image, host="node-b", image_id=image_id)
        for i in range(n)
    ]
    results = common.load_all(batch)
    start = min(r.enqueued_at for r in results)
    copies = sum(bool(r.step("pre_define")["result"]["master_copied"]) for r in results)
    total = max(r.step("power_on")["ended_at"] for r in results) - start
    pre = [r.step("pre_define")["duration_s"] for r in results]
    common.cleanup_computers("bench-n")
    uncache(image)
    return [n, copies, total, max(pre), median(pre)]


def run(ctx: Context) -> list[tuple[str, str]]:
    reps, n = (1, 3) if ctx.quick else (3, 10)
    crowd_variant = "sparse" if ctx.quick else "full"
    variants = {"sparse": VARIANTS["sparse"]} if ctx.quick else VARIANTS
    paths = {v: make_image(ctx, image, mib) for v, (image, mib) in variants.items()}
    worker = common.start_worker(ctx, ["node-b"], n, "node-b")
    times: dict[tuple[str, str], list[float]] = {}
    copied: list[bool] = []
    try:
        common.load_all(
            [
                common.reservation(
                    "bench-m0", 450, VARIANTS["sparse"][0], host="node-b", image_id=7003
                )
            ]
        )
        common.cleanup_computers("bench-m0")  # warm-up: the worker's connections are open
        (cached,) = common.load_all(
            [
                common.reservation(
                    "bench-m0", 450, VARIANTS["sparse"][0], host="node-b", image_id=7003
                )
            ]
        )
        common.cleanup_computers("bench-m0")  # the same load with the master cached
        for _ in range(reps):
            for variant, (image, _mib) in variants.items():
                image_id = 7003 if variant == "sparse" else 7004
                seconds, was_copied = vclvirt_copy(image, image_id)
                times.setdefault((variant, "vclvirt"), []).append(seconds)
                copied.append(was_copied)
                dest = ctx.workdir / "copy.qcow2"
                times.setdefault((variant, "scp"), []).append(
                    timed([*SCP, str(paths[variant]), f"{common.host_login('node-b')}:{dest}"])
                )
                dest.unlink()
                times.setdefault((variant, "qemu-img convert"), []).append(
                    timed(["qemu-img", "convert", "-O", "qcow2", str(paths[variant]), str(dest)])
                )
                dest.unlink()
        crowd = concurrent_uncached(variants[crowd_variant][0], 7003 if ctx.quick else 7004, n)
    finally:
        worker.stop()
        common.cleanup_computers()
        for image, _ in VARIANTS.values():
            uncache(image)
    rows = []
    for variant, (_image, mib) in variants.items():
        size = paths[variant].stat().st_size / 2**20
        v = median(times[(variant, "vclvirt")])
        for tool in ("vclvirt", "scp", "qemu-img convert"):
            m = median(times[(variant, tool)])
            rows.append([f"{variant} ({mib} MiB data, file {size:.0f} MiB)", tool, m, v / m])
    body = table(["image (1 GiB virtual)", "copy by", "median s", "vclvirt / this"], rows)
    body += (
        f"\n\nvclvirt: duration of pre_define on node-b with the master not cached (repository "
        f"→ datastore copy, verification, overlay), master_copied true in {sum(copied)}/"
        f"{len(copied)} runs; scp: to another path on this machine through node-b's sshd; "
        f"qemu-img convert: local, to qcow2. {reps} interleaved runs each. The same pre_define "
        f"with the master already cached took {cached.step('pre_define')['duration_s']:.3f} s "
        f"(master lookup and overlay through libvirt's storage pools).\n\n"
    )
    body += table(
        [
            f"concurrent loads ({crowd_variant} image, uncached)",
            "master copies",
            "total s (enqueue → last running)",
            "slowest pre_define s",
            "median pre_define s",
        ],
        [crowd],
    )
    return [("3. Master distribution (1 GiB image)", body)]
