"""Which configured values are secrets, and how URLs holding them are shown to people.

The API token, the broker's (and result backend's) password and Flower's password
never appear in a log line or on a screen: loggers redact `known_secrets()`, and
every URL shown goes through `masked_url()`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

from vclvirt.config.settings import Settings

MASK = "***"
# Shorter values are too likely to occur in ordinary text to be redacted by value.
_MIN_SECRET_LENGTH = 4


def url_password(url: str | None) -> str | None:
    """The password part of a URL (as written, percent-encoded), or None."""
    if not url:
        return None
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def masked_url(url: str) -> str:
    """The URL with its password replaced by ***; unparseable URLs are not shown at all."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "(unparseable URL)"
    if password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:{MASK}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def known_secrets(settings: Settings, environ: Mapping[str, str] = os.environ) -> list[str]:
    """Every secret this process knows, in each form it could be printed in."""
    values: set[str] = set()
    if settings.api_token and settings.api_token.strip():
        values.add(settings.api_token.strip())
    for url in (settings.broker_url, settings.result_backend):
        password = url_password(url)
        if password:
            values |= {password, unquote(password)}
    flower_auth = environ.get("FLOWER_BASIC_AUTH", "")
    for pair in filter(None, flower_auth.split(",")):
        values.add(pair.partition(":")[2])
    values.add(environ.get("FLOWER_PASSWORD", ""))
    forms = {form for value in values for form in (value, json.dumps(value)[1:-1])}
    # Longest first, so a secret containing another is replaced whole.
    return sorted((v for v in forms if len(v) >= _MIN_SECRET_LENGTH), key=len, reverse=True)
