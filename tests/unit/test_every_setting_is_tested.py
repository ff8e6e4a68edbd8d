"""Every setting is changed by at least one test (#23.4): a setting no test changes is one
whose effect nobody checks, and a bug there survives the whole suite (the node_status
timeout did).

The check is textual, so it stays cheap: some test file must set the field, as a keyword
(`Settings(lease_ttl=5)`, `model_copy(update={"lease_ttl": 5})`) or through its
environment variable (`{"VCLVIRT_LEASE_TTL": "5"}`, `monkeypatch.setenv("VCLVIRT_…")`).
That the test also observes the effect is for review to see; the tests named in each
setting's section below do.
"""

from __future__ import annotations

import re
from pathlib import Path

from vclvirt.config.settings import Settings

TESTS = Path(__file__).resolve().parents[1]
# tests/fleet is a bench of its own (scripts/fleet), not part of the suite's coverage.
SKIPPED = {TESTS / "fleet", Path(__file__).resolve()}

# Settings whose effect only real services can show, with the integration or e2e test that
# changes one and observes it. Empty: every setting is changed where a test can see it.
REAL_SERVICES_ONLY: dict[str, str] = {}


def _test_sources() -> str:
    files = [
        path
        for path in sorted(TESTS.rglob("*.py"))
        if not any(path == s or s in path.parents for s in SKIPPED)
    ]
    return "\n".join(path.read_text(errors="replace") for path in files)


def changes(name: str, source: str) -> bool:
    """Whether `source` sets the setting `name` (keyword, update dict or environment)."""
    env = re.escape(f"VCLVIRT_{name.upper()}")
    patterns = (
        rf"\b{name}=(?!=)",  # Settings(name=…), a keyword argument
        rf"[\"']{name}[\"']\s*:",  # model_copy(update={"name": …})
        rf"\b{env}[\"']?\s*[:=,]",  # {"VCLVIRT_NAME": …}, VCLVIRT_NAME=…, setenv("…", …)
    )
    return any(re.search(p, source) for p in patterns)


def test_the_checker_tells_a_change_from_a_mention() -> None:
    assert changes("lease_ttl", "Settings(lease_ttl=5)")
    assert changes("lease_ttl", 'update={"lease_ttl": 5}')
    assert changes("lease_ttl", 'env = {"VCLVIRT_LEASE_TTL": "5"}')
    assert changes("lease_ttl", 'monkeypatch.setenv("VCLVIRT_LEASE_TTL", "5")')
    assert not changes("lease_ttl", 'assert "VCLVIRT_LEASE_TTL" in error.hint')
    assert not changes("lease_ttl", "ttl = settings.lease_ttl")
    assert not changes("lease_ttl", "if lease_ttl == 5:")


def test_every_setting_is_changed_by_some_test() -> None:
    source = _test_sources()
    untested = [
        name
        for name in Settings.model_fields
        if name not in REAL_SERVICES_ONLY and not changes(name, source)
    ]
    assert not untested, (
        f"settings no test changes: {untested}; add a test that sets each and observes "
        "its effect (or, if only real services can show it, name the test that does in "
        "REAL_SERVICES_ONLY)"
    )


def test_the_allow_list_names_real_settings_and_tests() -> None:
    source = _test_sources()
    for name, test in REAL_SERVICES_ONLY.items():
        assert name in Settings.model_fields, name
        assert f"def {test}(" in source, f"{name}: no test named {test}"
