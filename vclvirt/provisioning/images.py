"""Image queries on a host (does_image_exist, get_image_size, list_images): a master in
the datastore first, else the repository — each read where it is: masters on the host,
the repository on the host or on this machine (repository_location = "worker")."""

from __future__ import annotations

import posixpath
from typing import Any

from vclvirt.errors import ImageNotFound
from vclvirt.images.copy import Progress
from vclvirt.images.master import (
    ensure_master,
    find_in_repository,
    find_master,
    repository_node,
)
from vclvirt.images.repository import allocated_bytes, is_master_file
from vclvirt.provisioning.access import HostAccess


class ImageQueries:
    """What the scheduler asks about images, answered by the host."""

    def __init__(self, context: HostAccess) -> None:
        self.ctx = context

    def exists(self, image_name: str) -> bool:
        """On the host as a master, or in the repository."""
        ctx = self.ctx
        return bool(find_master(ctx.node, ctx.host, image_name)) or bool(
            find_in_repository(ctx.node, ctx.host, image_name)
        )

    def size_bytes(self, image_name: str) -> int:
        """Allocated bytes of the host's master, else of the repository files; ImageNotFound."""
        ctx = self.ctx
        master = find_master(ctx.node, ctx.host, image_name)
        if master:
            return allocated_bytes(ctx.node, [master])
        source = find_in_repository(ctx.node, ctx.host, image_name)
        if source is None:
            raise ImageNotFound(
                f"image {image_name} is neither a master on the host nor in the repository",
                host=ctx.host.name,
            )
        return allocated_bytes(repository_node(ctx.node, ctx.host), list(source.files))

    def stage(self, image_name: str, progress: Progress | None = None) -> dict[str, Any]:
        """The master on the host, copied from the repository if absent, exactly as a
        load's pre_define brings it (one copy per host, verified, never half-visible)."""
        ctx = self.ctx
        master = ensure_master(ctx.node, ctx.driver, ctx.host, image_name, progress, ctx.files)
        return {"master": master.path, "copied": master.copied, "bytes": master.bytes_written}

    def size_mb(self, image_name: str) -> int:
        """Size in MB (floor), as the reference reports it to image.pm."""
        return self.size_bytes(image_name) // 2**20

    def listing(self) -> dict[str, list[str]]:
        """Masters in the datastore and image directories in the repository."""
        ctx = self.ctx
        masters = ctx.node.run(
            ["find", "-H", ctx.host.datastore_path, "-xtype", "f", "-name", "*.*"], check=False
        ).text.splitlines()
        names = sorted(
            {posixpath.splitext(posixpath.basename(p))[0] for p in masters if is_master_file(p)}
        )
        repository: list[str] = []
        if ctx.host.repository_path:
            listing = repository_node(ctx.node, ctx.host).run(
                [
                    *("find", "-H", ctx.host.repository_path),
                    *("-mindepth", "1", "-maxdepth", "1", "-xtype", "d"),
                ],
                check=False,
            )
            repository = sorted(posixpath.basename(p) for p in listing.text.splitlines() if p)
        return {"datastore": names, "repository": repository}
