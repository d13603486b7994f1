"""Frame timestamps: lib/scheduling/timefmt.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from lib.scheduling import timefmt

MOMENT = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
WHOLE_SECOND = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_write_is_iso_with_microseconds_and_utc_offset() -> None:
    assert timefmt.write(MOMENT) == "2026-01-02T03:04:05.123456+00:00"


def test_write_keeps_microseconds_on_a_whole_second() -> None:
    assert timefmt.write(WHOLE_SECOND) == "2026-01-02T03:04:05.000000+00:00"


def test_write_converts_other_offsets_to_utc() -> None:
    local = MOMENT.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert timefmt.write(local) == "2026-01-02T03:04:05.123456+00:00"


def test_write_then_read_round_trips() -> None:
    assert timefmt.read(timefmt.write(MOMENT)) == MOMENT
    now = timefmt.now()
    assert now.tzinfo is not None
    assert timefmt.read(timefmt.write(now)) == now


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-01-02T03:04:05.123456+00:00", MOMENT),
    ("2026-01-02T03:04:05+00:00", WHOLE_SECOND),
    ("2026-01-02T03:04:05.123456Z", MOMENT),
    ("2026-01-02T03:04:05Z", WHOLE_SECOND),
    ("2026-01-02T03:04:05.123Z", datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=UTC)),
    ("2026-01-02T05:04:05.123456+02:00", MOMENT),
    ("2026-01-02T01:34:05-01:30", WHOLE_SECOND),
    ("2026-01-02 03:04:05.123456 +0000", MOMENT),
    ("2026-01-02 03:04:05 +0000", WHOLE_SECOND),
    ("2026-01-02 03:04:05 -0130", WHOLE_SECOND + timedelta(hours=1, minutes=30)),
    ("2026-01-02 05:04:05.123456 +0200", MOMENT),
])
def test_read_accepts_iso_and_reference_forms(text: str, expected: datetime) -> None:
    parsed = timefmt.read(text)
    assert parsed == expected
    assert parsed.tzinfo is not None


def test_read_keeps_the_offset_of_the_reference_form() -> None:
    parsed = timefmt.read("2026-01-02 03:04:05 -0130")
    assert parsed.utcoffset() == -timedelta(hours=1, minutes=30)
    assert (parsed.hour, parsed.minute, parsed.second) == (3, 4, 5)
    assert parsed.astimezone(UTC) == datetime(2026, 1, 2, 4, 34, 5, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-01-02 03:04:05", WHOLE_SECOND),
    ("2026-01-02T03:04:05", WHOLE_SECOND),
    ("2026-01-02 03:04:05.123456", MOMENT),
    ("2026-01-02T03:04:05.123456", MOMENT),
])
def test_read_treats_naive_strings_as_utc(text: str, expected: datetime) -> None:
    parsed = timefmt.read(text)
    assert parsed.utcoffset() == timedelta(0)
    assert parsed == expected


def test_read_ignores_surrounding_whitespace() -> None:
    assert timefmt.read("  2026-01-02 03:04:05.123456 +0000\n") == MOMENT


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-02 03:04:05"])
def test_read_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        timefmt.read(text)
