"""Secrets by reference: `env:VARIABLE` or `file:/path`, read when used, never stored or exported.

Transform profiles (their keyed-hash secret) and DICOMweb destinations (their credentials) name where a
secret is; this module is the one reader.
"""

import os
from pathlib import Path

KINDS = ("env:", "file:")


class SecretUnavailable(Exception):
    """The reference names nothing readable (an unset variable, a missing or unreadable file)."""


def is_reference(text: str) -> bool:
    return text.startswith(KINDS) and len(text.partition(":")[2]) > 0


def read(reference: str) -> bytes:
    """The secret, surrounding whitespace removed (a file ends with a newline). Raises SecretUnavailable,
    whose message names the reference, never the value."""
    kind, _, where = reference.partition(":")
    if kind == "env":
        value = os.environ.get(where, "").encode()
    elif kind == "file":
        try:
            value = Path(where).read_bytes()
        except OSError as exc:
            raise SecretUnavailable(f"{reference} cannot be read: {exc.strerror}") from exc
    else:
        raise SecretUnavailable(f"{reference!r} is not env:VARIABLE or file:/path")
    value = value.strip()
    if not value:
        raise SecretUnavailable(f"{reference} is empty or not set")
    return value
