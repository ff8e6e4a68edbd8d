"""`vclvirt worker` for the scale simulation, with pool children never recycled.

libvirt's test:///default keeps its domains in the memory of the process that opened it;
vclvirt recycles a pool child after 200 tasks (worker_max_tasks_per_child), and the new
child would not know the domains its predecessor defined. Everything else is unchanged.
"""

from vclvirt.workers.app import app

app.conf.worker_max_tasks_per_child = None

from vclvirt.cli import run  # noqa: E402 - after the configuration change

run()
