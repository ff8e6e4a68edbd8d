# The two commands of README.md: `make demo` (a real load on this machine) and
# `make test` (the whole suite against real services). Both install what they need.
SHELL := /bin/bash
PY := .venv/bin/python
TESTBED ?= /var/lib/vclvirt-testbed
PYTEST_ARGS ?=

.PHONY: bootstrap testbed fleet guest test test-fast test-unit demo lint stop bench

bootstrap:
	scripts/bootstrap

testbed: bootstrap
	scripts/testbed start

# The fleet (scripts/fleet): FLEET hosts that are namespaces of their own, and a library server.
FLEET ?= 4
fleet: testbed
	scripts/testbed fleet up $(FLEET)

guest: bootstrap
	scripts/build-test-guest

# The fleet tier runs beside the rest, on the fleet's own Redis (scripts/run-tests).
test: bootstrap testbed fleet guest
	scripts/run-tests $(PYTEST_ARGS)

test-fast: bootstrap testbed fleet
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The unit tier alone: no service at all (no Redis, libvirtd, sshd or test bed), in under
# a minute. The store and host are vclvirt.testing's doubles, the hypervisor libvirt's
# in-process test driver; --confcutdir keeps the test bed's fixtures (tests/conftest.py) out.
test-unit: bootstrap
	$(PY) -m pytest --confcutdir=tests/unit tests/unit $(PYTEST_ARGS)

demo: bootstrap testbed guest
	scripts/demo $(IMAGE)

# One reservation on each of FLEET hosts, by one worker serving them all (scripts/fleet-demo).
.PHONY: fleet-demo
fleet-demo: fleet guest
	$(PY) scripts/fleet-demo

lint: bootstrap
	.venv/bin/ruff check vclvirt tests
	.venv/bin/ruff format --check vclvirt tests
	.venv/bin/mypy

stop:
	scripts/testbed stop --all

bench: bootstrap testbed guest
	.venv/bin/python -m bench

# Mutation check: the deliberate bugs of tests/mutants.toml, applied one at a time to a
# copy of the working tree; each must make its tests fail (scripts/mutants).
.PHONY: mutants
mutants: bootstrap testbed
	scripts/mutants

# Generated mutants (mutmut) over the pure core, against the unit tier: the score per
# module, every survivor triaged in tests/mutation-survivors.md (scripts/mutation). Like
# `make test-unit` it needs no service, so no test bed. MODULES="textcheck naming" for
# some modules only.
.PHONY: mutation
mutation: bootstrap
	scripts/mutation $(MODULES)
