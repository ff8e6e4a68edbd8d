"""Text that people and guests will see: no control or format characters, nothing blank.

A newline in a pretty name becomes an extra `key=value` line in the guest's
currentimage.txt; U+202E or U+200B make a name look like another. Every text
field of every input goes through `check_text`; every piece of input quoted back
in an error message goes through `field_label`.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

# Cc: C0/C1 controls (NUL, ESC, newline...), Cf: format (U+200B, U+202E, BOM...),
# Cs: lone surrogates, Co: private use, Zl/Zp: line and paragraph separators.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Zl", "Zp"}
_LABEL_LENGTH = 64
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CONTROL_NAMES = {
    "\x00": "NULL",
    "\t": "TAB",
    "\n": "LINE FEED",
    "\r": "CARRIAGE RETURN",
    "\x1b": "ESCAPE",
    "\x7f": "DELETE",
}


def _describe(char: str) -> str:
    name = unicodedata.name(char, "")
    if not name and unicodedata.category(char) == "Cc":
        name = _CONTROL_NAMES.get(char, "CONTROL")
    return f"U+{ord(char):04X}" + (f" ({name})" if name else "")


def check_text(value: Any) -> Any:
    """Refuse control/format characters and blank text; other types pass through untouched
    (strict type validation names them)."""
    if not isinstance(value, str):
        return value
    for position, char in enumerate(value):
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise ValueError(
                f"contains the control or format character {_describe(char)} at position {position}"
            )
    if value and not value.strip():
        raise ValueError("must not be blank")
    return value


def field_label(text: str) -> str:
    """Input quoted back to people: a plain name as it is, anything else quoted, escaped
    (non-ASCII too: look-alike letters must not pass for the real name) and short."""
    if _PLAIN_NAME.fullmatch(text):
        return text
    shown = ascii(text[:_LABEL_LENGTH])
    return shown + ("..." if len(text) > _LABEL_LENGTH else "")
