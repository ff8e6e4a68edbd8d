"""`~/currentimage.txt` in the guest: the image's name, then `key=value` tags (as VCL writes it).

node_status reads `imagerevision_id`, `vcld_post_load` and `vcld_tainted` from it.
Pure text functions; unknown lines are kept as they are.
"""

from __future__ import annotations

FILE_NAME = "currentimage.txt"


def parse_tags(text: str) -> dict[str, str]:
    tags = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            tags[key.strip()] = value.strip()
    return tags


def set_tags(text: str, **tags: str | None) -> str:
    """Replace (or append) each tag; a None value removes the tag."""
    lines, seen = [], set()
    for line in text.splitlines():
        key, sep, _ = line.partition("=")
        key = key.strip()
        if sep and key in tags:
            seen.add(key)
            if tags[key] is not None:
                lines.append(f"{key}={tags[key]}")
            continue
        lines.append(line)
    lines += [f"{k}={v}" for k, v in tags.items() if k not in seen and v is not None]
    return "\n".join(lines) + "\n"
