"""UBIDs: 128-bit UUIDv8 ids written as 26 Crockford base32 characters with a type prefix.

Layout (bit 127 most significant): 48 bits of time in ms or random | version 8 (4 bits) |
rand_a (2) | type (10) | variant 0b10 (2) | rand_b (62). The string is the two type
characters, then 11 characters for bits 127..74 plus an even-parity bit, then 13 characters
for bits 63..0 plus an even-parity bit.
"""

from __future__ import annotations

import math
import re
import secrets
import time
import uuid
from datetime import UTC, datetime

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_VALUES = {char: value for value, char in enumerate(ALPHABET)}
_VALUES.update({"o": 0, "i": 1, "l": 1})

# Type prefixes of the models that mint ids.
TYPE_PROJECT = "pj"
TYPE_VM = "vm"
TYPE_VM_HOST = "vh"
TYPE_STRAND = "st"
TYPE_SEMAPHORE = "sm"
TYPE_PAGE = "pa"
TYPE_SSHABLE = "sh"
TYPE_MACHINE_IMAGE = "m1"
TYPE_MACHINE_IMAGE_VERSION = "mv"
TYPE_MACHINE_IMAGE_STORE = "m0"
TYPE_STORAGE_KEY_ENCRYPTION_KEY = "ke"
TYPE_VM_STORAGE_VOLUME = "vs"
TYPE_API_TOKEN = "ak"
TYPE_ETC = "et"
TYPE_LOCATION = "10"


class UbidParseError(ValueError):
    """A string is not a well-formed UBID."""


def _encode(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        chars.append(ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def _decode(text: str) -> int:
    value = 0
    for char in text:
        digit = _VALUES.get(char.lower())
        if digit is None:
            raise UbidParseError(f"Invalid base32 encoding: {char.upper()}")
        value = (value << 5) | digit
    return value


def _parity(value: int) -> int:
    return value.bit_count() & 1


def type_code(prefix: str) -> int:
    """The 10-bit number of a two-character type prefix (`sm` → 820)."""
    if len(prefix) != 2:
        raise ValueError(f"a type prefix has two characters, got {prefix!r}")
    return _decode(prefix)


def from_parts(timestamp: int, prefix: str, rand_a: int, rand_b: int) -> uuid.UUID:
    """Assemble a UUID from the UBID fields (version 8, variant 0b10)."""
    value = (
        (timestamp & (2**48 - 1)) << 80
        | 0x8 << 76
        | (rand_a & 3) << 74
        | type_code(prefix) << 64
        | 0b10 << 62
        | (rand_b & (2**62 - 1))
    )
    return uuid.UUID(int=value)


def to_ubid(value: uuid.UUID | str) -> str:
    """Render a UUID (any UUID: foreign ones too) as its 26-character UBID."""
    number = (value if isinstance(value, uuid.UUID) else uuid.UUID(value)).int
    top = number >> 74
    bottom = number & (2**64 - 1)
    return (
        _encode((number >> 64) & 1023, 2)
        + _encode(top << 1 | _parity(top), 11)
        + _encode(bottom << 1 | _parity(bottom), 13)
    )


def to_uuid(text: str) -> uuid.UUID:
    """Parse a UBID; raise `UbidParseError` with the reason when it is malformed."""
    if len(text) != 26:
        raise UbidParseError(f"Invalid encoding length: {len(text)}")
    kind = _decode(text[:2])
    top = _decode(text[2:13])
    if _parity(top):
        raise UbidParseError("Invalid top bits parity")
    bottom = _decode(text[13:])
    if _parity(bottom):
        raise UbidParseError("Invalid bottom bits parity")
    return uuid.UUID(int=(top >> 1) << 74 | kind << 64 | bottom >> 1)


def is_valid(text: str, prefix: str | None = None) -> bool:
    """True when `text` parses as a UBID (and carries `prefix`, when given)."""
    try:
        to_uuid(text)
    except UbidParseError:
        return False
    return prefix is None or text.lower().startswith(prefix)


def looks_like(text: str, prefix: str) -> bool:
    """The canonical lowercase shape of an id of type `prefix`: used to forbid id-like names."""
    return re.fullmatch(prefix + r"[a-tv-z0-9]{24}", text) is not None


def generate(prefix: str) -> uuid.UUID:
    """A random id: 48 random bits where the time would be, so ids spread over the uuid space."""
    rest = secrets.randbits(64)
    return from_parts(secrets.randbits(48), prefix, rest & 3, rest >> 2)


def generate_from_time(prefix: str, at: float | None = None) -> uuid.UUID:
    """A time-ordered id whose top 48 bits are `at` (default: now) in milliseconds."""
    # Now is floored (a millisecond that has not started must not be claimed); an explicit
    # time is rounded.
    millis = math.floor(time.time() * 1000) if at is None else round(at * 1000)
    rest = secrets.randbits(64)
    return from_parts(millis, prefix, rest & 3, rest >> 2)


def prefix_of(value: uuid.UUID) -> str:
    return _encode((value.int >> 64) & 1023, 2)


def time_of(value: uuid.UUID) -> datetime:
    """The creation time encoded in a time-ordered id, with millisecond precision."""
    return datetime.fromtimestamp((value.int >> 80) / 1000, tz=UTC)
