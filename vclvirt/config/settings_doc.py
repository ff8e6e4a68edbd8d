"""The settings table of docs/settings.md, generated from `Settings` so the two cannot drift.

`python -m vclvirt.config.settings_doc` rewrites the table between the markers;
`--check` exits 1 when the document differs from what `Settings` gives (the unit tier
runs the same comparison).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic.fields import FieldInfo

from vclvirt.config.settings import Settings

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "settings.md"
BEGIN = "<!-- settings-table: begin (python -m vclvirt.config.settings_doc) -->"
END = "<!-- settings-table: end -->"


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def _bounds(info: FieldInfo) -> str:
    parts = []
    for bound in info.metadata:
        if isinstance(bound, Gt):
            parts.append(f"> {bound.gt}")
        elif isinstance(bound, Ge):
            parts.append(f"≥ {bound.ge}")
        elif isinstance(bound, Lt):
            parts.append(f"< {bound.lt}")
        elif isinstance(bound, Le):
            parts.append(f"≤ {bound.le}")
    return ", ".join(parts)


def table() -> str:
    """One row per field: variable, default, valid values, meaning."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    rows = ["| variable | default | valid | meaning |", "|---|---|---|---|"]
    for name, info in Settings.model_fields.items():
        if not info.description:
            raise ValueError(f"Settings.{name} has no description: add Field(description=...)")
        description = " ".join(info.description.split()).replace("|", "\\|")
        variable = f"`{prefix}{name.upper()}`"
        rows.append(f"| {variable} | {_default(info.default)} | {_bounds(info)} | {description} |")
    return "\n".join(rows)


def render(document: str) -> str:
    """`document` with the text between the markers replaced by the current table."""
    head, begin, rest = document.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"the document lacks the markers {BEGIN!r} … {END!r}")
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    current = DOCUMENT.read_text(encoding="utf-8")
    wanted = render(current)
    if "--check" in argv:
        if current != wanted:
            print(f"{DOCUMENT} differs from Settings: run python -m vclvirt.config.settings_doc")
            return 1
        return 0
    if current != wanted:
        DOCUMENT.write_text(wanted, encoding="utf-8")
        print(f"rewrote the settings table of {DOCUMENT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
