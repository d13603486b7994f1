"""Timestamps kept inside stack frames: written ISO-8601 with µs and offset, read leniently."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)


def write(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def read(text: str) -> datetime:
    """Parse ISO-8601 and the reference's `YYYY-MM-DD HH:MM:SS[.ffffff] ±HHMM`; naive means UTC."""
    cleaned = text.strip()
    if len(cleaned) > 6 and cleaned[-6] == " " and cleaned[-5] in "+-":
        cleaned = cleaned[:-6] + cleaned[-5:]  # "… +0000" → "…+0000"
    moment = datetime.fromisoformat(cleaned)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
