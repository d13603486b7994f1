"""Respirate metrics: Prometheus series and the periodic summary event."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest

from lib.scheduling.metrics import RespirateMetrics


def test_series_count_claims_runs_and_lost_leases() -> None:
    metrics = RespirateMetrics()
    metrics.claimed(4, 1, 0.002, [0.01, 0.02, 0.03, 0.04])
    for _ in range(3):
        metrics.started(0.001, 0.05)
        metrics.finished(10, lease_lost=False)
    metrics.finished(2, lease_lost=True)
    text = generate_latest(metrics.registry).decode()
    assert "respirate_steps_total 32.0" in text
    assert "respirate_runs_total 4.0" in text
    assert "respirate_leases_reclaimed_total 1.0" in text
    assert "respirate_lease_acquisition_ratio 0.75" in text
    assert "respirate_scan_delay_seconds_count 4.0" in text
    assert "respirate_total_delay_seconds_count 3.0" in text


def test_the_summary_event_reports_rates_and_sorted_percentiles(logs: list[Any]) -> None:
    metrics = RespirateMetrics(event_every=0)
    for delay in (0.5, 0.1, 0.3, 0.2, 0.4):  # arrival order is not sorted
        metrics.started(0.0, delay)
    metrics.finished(50, lease_lost=False)
    summary = metrics.maybe_log(queue_depth=2, running=1)
    assert summary is not None
    assert summary["total_delay_p50"] == 0.3 and summary["total_delay_max"] == 0.5
    assert summary["queue_depth"] == 2 and summary["steps_per_second"] > 0
    assert [e["event"] for e in logs] == ["respirate metrics"]


def test_no_summary_before_its_window_ends() -> None:
    assert RespirateMetrics(event_every=3600).maybe_log(0, 0) is None
