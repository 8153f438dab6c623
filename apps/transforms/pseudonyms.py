"""Keyed pseudonyms: the same input and secret give the same output in every process, on every day; another
secret gives another output, and without the secret nobody can rebuild the mapping by guessing inputs (an
unkeyed hash of a UID or a patient ID can be reversed by hashing candidates).

Each kind of value has its own domain label inside the HMAC, so a patient ID and a UID that happen to be the
same string do not map to related values.
"""

import hashlib
import hmac

MIN_SECRET_BYTES = 16
# Shifted dates go back between 1 day and about 10 years: never 0, so no shifted date equals the real one.
MAX_DATE_OFFSET_DAYS = 3650
PATIENT_PSEUDONYM_LENGTH = 20  # hex digits: 80 bits, no collision to expect below 10^9 patients


class SecretNeeded(ValueError):
    """The profile pseudonymises, hashes or shifts dates, and was given no usable secret."""


def _mac(secret: bytes, domain: bytes, value: str) -> bytes:
    if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
        raise SecretNeeded(f"a transform secret must be bytes, at least {MIN_SECRET_BYTES} long")
    return hmac.new(secret, domain + b"\0" + value.encode("utf-8"), hashlib.sha256).digest()


def uid_pseudonym(uid: str, secret: bytes) -> str:
    """A UID under the 2.25 root (PS3.5 B.2): the integer of a UUID made from the keyed hash, with the version
    (8, custom) and variant bits set as RFC 9562 asks, so it is at most 44 characters."""
    raw = bytearray(_mac(secret, b"uid", uid.strip())[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    return "2.25." + str(int.from_bytes(raw, "big"))


def patient_pseudonym(patient_id: str, secret: bytes) -> str:
    return _mac(secret, b"patient", patient_id.strip()).hex().upper()[:PATIENT_PSEUDONYM_LENGTH]


def date_offset_days(patient_id: str, secret: bytes) -> int:
    """Days to add to every date of this patient: negative, never zero, the same for all their studies."""
    number = int.from_bytes(_mac(secret, b"date-offset", patient_id.strip())[:8], "big")
    return -(1 + number % MAX_DATE_OFFSET_DAYS)


def keyed_hash(value: str, secret: bytes, length: int) -> str:
    """Upper-case hex of the keyed hash, cut to `length` (at most 64): valid in every text VR, CS included."""
    return _mac(secret, b"value", value).hex().upper()[:length]
