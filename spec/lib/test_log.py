"""Structured logging: lib/log.py.

structlog's PrintLoggerFactory binds the `sys.stderr` of the moment `configure` runs, so each
test configures after capsys is active, and the autouse fixture below restores the suite's
configuration once capsys has put the real stream back.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from lib.log import configure, get_logger


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # Autouse fixtures are set up before capsys, so this teardown runs after capsys's.
    yield
    configure("console", "debug")


def test_json_format_writes_one_json_object_with_event_level_timestamp_and_fields(
        capsys: pytest.CaptureFixture[str]) -> None:
    configure("json", "info")
    get_logger("spec.lib.test_log").info("strand hopped", strand="st123", count=3)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["event"] == "strand hopped"
    assert record["level"] == "info"
    assert record["strand"] == "st123"
    assert record["count"] == 3
    stamp = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
    assert stamp.utcoffset() == timedelta(0)


def test_json_format_writes_one_line_per_event(capsys: pytest.CaptureFixture[str]) -> None:
    configure("json", "debug")
    log = get_logger("spec.lib.test_log")
    log.info("first", n=1)
    log.warning("second", n=2)
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(r["event"], r["level"], r["n"]) for r in records] == [
        ("first", "info", 1), ("second", "warning", 2)]


def test_json_format_renders_exception_tracebacks_as_data(
        capsys: pytest.CaptureFixture[str]) -> None:
    configure("json", "info")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("spec.lib.test_log").exception("step failed")
    record = json.loads(capsys.readouterr().err)
    assert record["event"] == "step failed"
    assert record["level"] == "error"
    assert "boom" in json.dumps(record["exception"])


def test_debug_events_are_filtered_at_info_level(capsys: pytest.CaptureFixture[str]) -> None:
    configure("json", "info")
    log = get_logger("spec.lib.test_log")
    log.debug("hidden detail", secret=1)
    assert capsys.readouterr().err == ""
    log.info("visible")
    assert json.loads(capsys.readouterr().err)["event"] == "visible"


def test_debug_events_are_written_at_debug_level(capsys: pytest.CaptureFixture[str]) -> None:
    configure("json", "debug")
    get_logger("spec.lib.test_log").debug("shown detail")
    record = json.loads(capsys.readouterr().err)
    assert record["event"] == "shown detail"
    assert record["level"] == "debug"


def test_info_events_are_filtered_at_warning_level(capsys: pytest.CaptureFixture[str]) -> None:
    configure("json", "warning")
    log = get_logger("spec.lib.test_log")
    log.info("quiet")
    assert capsys.readouterr().err == ""
    log.error("loud")
    assert json.loads(capsys.readouterr().err)["level"] == "error"


def test_console_format_renders_the_event_text(capsys: pytest.CaptureFixture[str]) -> None:
    configure("console", "info")
    get_logger("spec.lib.test_log").info("console event here", strand="st42")
    err = capsys.readouterr().err
    assert "console event here" in err
    assert "strand=st42" in err
    assert "info" in err
    assert "\x1b[" not in err  # no colours when stderr is not a terminal
    with pytest.raises(json.JSONDecodeError):
        json.loads(err)


def test_enabled_follows_the_configured_level() -> None:
    from lib.log import configure, enabled

    configure("console", "info")
    assert enabled("info") and enabled("error") and not enabled("debug")
    configure("console", "debug")
    assert enabled("debug")


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_logged_tracebacks_carry_no_local_variables(
        capsys: pytest.CaptureFixture[str], log_format: str) -> None:
    """Locals hold master keys, client keys and stdin secrets."""
    import structlog

    from lib.log import configure

    configure(log_format, "info")

    def fails(secret: str) -> None:
        key_material = secret * 2
        raise RuntimeError("boom " + str(len(key_material)))

    secret = os.urandom(8).hex()  # made at run time: the source lines shown hold no secret
    try:
        fails(secret)
    except RuntimeError as error:
        structlog.get_logger("spec").error("strand failed", exc_info=error)
    written = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().err)  # colours
    assert "boom 32" in written and "RuntimeError" in written
    assert secret not in written
