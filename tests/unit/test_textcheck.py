"""textcheck: the exact words people read about refused characters, blank text and quoted input."""

from __future__ import annotations

import pytest

from vclvirt.textcheck import check_text, field_label


def refusal(text: str) -> str:
    with pytest.raises(ValueError) as caught:
        check_text(text)
    return str(caught.value)


def test_named_format_character_is_shown_with_its_unicode_name() -> None:
    """A format character with a Unicode name is shown as U+XXXX (NAME) with its position."""
    assert refusal("ab\u202ec") == (
        "contains the control or format character U+202E (RIGHT-TO-LEFT OVERRIDE) at position 2"
    )


@pytest.mark.parametrize(
    ("char", "shown"),
    [
        ("\x00", "U+0000 (NULL)"),
        ("\t", "U+0009 (TAB)"),
        ("\n", "U+000A (LINE FEED)"),
        ("\r", "U+000D (CARRIAGE RETURN)"),
        ("\x1b", "U+001B (ESCAPE)"),
        ("\x7f", "U+007F (DELETE)"),
    ],
)
def test_unnamed_control_character_gets_its_common_name(char: str, shown: str) -> None:
    """C0 controls, which Unicode leaves unnamed, are shown with their common name."""
    assert refusal(f"x{char}") == f"contains the control or format character {shown} at position 1"


def test_other_unnamed_control_character_is_called_control() -> None:
    """A C1 control with no common name of ours is shown as CONTROL."""
    assert (
        refusal("\x85") == "contains the control or format character U+0085 (CONTROL) at position 0"
    )


@pytest.mark.parametrize(("char", "shown"), [("\ue000", "U+E000"), ("\ud800", "U+D800")])
def test_unnamed_character_that_is_not_a_control_has_no_name(char: str, shown: str) -> None:
    """Private-use and lone surrogate characters have no name: shown as the bare code point."""
    assert refusal(char) == f"contains the control or format character {shown} at position 0"


@pytest.mark.parametrize("blank", [" ", "   ", "\u00a0", "\u3000 "])
def test_blank_text_is_refused_with_its_reason(blank: str) -> None:
    """Text made only of spaces (any Unicode space) is refused as blank."""
    assert refusal(blank) == "must not be blank"


@pytest.mark.parametrize("value", ["", "a", " a ", 5, None, ["\x00"]])
def test_empty_text_and_other_types_pass_through_unchanged(value: object) -> None:
    """Empty text and non-text values are returned as they are (type checks name them)."""
    assert check_text(value) is value


def test_plain_name_up_to_64_characters_is_quoted_as_it_is() -> None:
    """A plain name of letters, digits, _ and - up to 64 characters is shown unquoted."""
    assert field_label("a" * 64) == "a" * 64
    assert field_label("Ab_9-") == "Ab_9-"


def test_plain_name_of_65_characters_is_quoted_and_cut() -> None:
    """A 65-character name is no longer plain: quoted, cut to 64 characters, with an ellipsis."""
    assert field_label("a" * 65) == repr("a" * 64) + "..."


def test_quoted_text_of_exactly_64_characters_has_no_ellipsis() -> None:
    """Text of exactly 64 characters is quoted whole, with no ellipsis."""
    assert field_label("a b" + "c" * 61) == repr("a b" + "c" * 61)


def test_non_ascii_text_is_escaped() -> None:
    """Look-alike letters are escaped, so they cannot pass for the real name."""
    assert field_label("p\u0430ssword") == "'p\\u0430ssword'"
    assert field_label("") == "''"
