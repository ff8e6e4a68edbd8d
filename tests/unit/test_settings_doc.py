"""docs/settings.md and `Settings` cannot drift: the table is regenerated and compared."""

from __future__ import annotations

import pytest

from vclvirt.config import settings_doc


def test_settings_table_matches_settings():
    """The committed table is what `python -m vclvirt.config.settings_doc` writes now."""
    document = settings_doc.DOCUMENT.read_text(encoding="utf-8")
    assert document == settings_doc.render(document), (
        "docs/settings.md differs from Settings: run python -m vclvirt.config.settings_doc"
    )


def test_every_setting_is_in_the_table_with_its_default():
    """Each field is one row naming its VCLVIRT_ variable (checks the generator itself)."""
    table = settings_doc.table()
    rows = table.splitlines()[2:]
    assert len(rows) == len(settings_doc.Settings.model_fields)
    assert "| `VCLVIRT_LEASE_TTL` | `30` | ≥ 3 |" in table
    assert "| `VCLVIRT_INVENTORY` | unset |" in table


def test_a_changed_table_is_found_and_rewritten():
    """A stale row is detected; text around the markers is kept."""
    stale = f"intro\n{settings_doc.BEGIN}\n| old |\n{settings_doc.END}\noutro\n"
    fresh = settings_doc.render(stale)
    assert fresh != stale
    assert fresh.startswith(f"intro\n{settings_doc.BEGIN}\n| variable |")
    assert fresh.endswith(f"{settings_doc.END}\noutro\n")


def test_a_document_without_markers_is_refused():
    with pytest.raises(ValueError, match="markers"):
        settings_doc.render("no table here\n")
