"""Respirate's metrics: Prometheus series, and a periodic `respirate metrics` log event.

Delays of a strand run, measured from the time it became due:
scan (due → claimed), lease (the claim statement's own time), queue (claimed → run started)
and total (due → run started).
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from lib.log import get_logger

log = get_logger(__name__)
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class RespirateMetrics:
    def __init__(self, registry: CollectorRegistry | None = None,
                 event_every: float = 60.0) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.scan_delay = Histogram("respirate_scan_delay_seconds",
                                    "Due until claimed", buckets=BUCKETS, registry=r)
        self.lease_delay = Histogram("respirate_lease_delay_seconds",
                                     "Time of the claim statement", buckets=BUCKETS, registry=r)
        self.queue_delay = Histogram("respirate_queue_delay_seconds",
                                     "Claimed until a worker starts the run", buckets=BUCKETS,
                                     registry=r)
        self.total_delay = Histogram("respirate_total_delay_seconds",
                                     "Due until the run starts", buckets=BUCKETS, registry=r)
        self.steps = Counter("respirate_steps", "Steps run", registry=r)
        self.runs = Counter("respirate_runs", "Strand runs", registry=r)
        self.acquired = Counter("respirate_leases_acquired", "Leases claimed", registry=r)
        self.lost = Counter("respirate_leases_lost", "Runs that found their lease taken over",
                            registry=r)
        self.reclaimed = Counter("respirate_leases_reclaimed",
                                 "Leases taken over from processes that were gone", registry=r)
        self.queue_depth = Gauge("respirate_queue_depth", "Claimed strands waiting for a worker",
                                 registry=r)
        self.running = Gauge("respirate_running_steps", "Strand runs in progress", registry=r)
        self.acquisition_ratio = Gauge(
            "respirate_lease_acquisition_ratio",
            "Leases kept through their run / leases claimed, since start", registry=r)
        self._delays: deque[float] = deque(maxlen=1000)
        self._event_every = event_every
        self._window_start = time.monotonic()
        self._window_steps = 0
        self._acquired = 0
        self._lost = 0

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)

    def claimed(self, count: int, reclaimed: int, statement_seconds: float,
                scan_delays: list[float]) -> None:
        self.acquired.inc(count)
        self.reclaimed.inc(reclaimed)
        self._acquired += count
        self.lease_delay.observe(statement_seconds)
        for delay in scan_delays:
            self.scan_delay.observe(delay)
        self._update_ratio()

    def started(self, queue_delay: float, total_delay: float) -> None:
        self.queue_delay.observe(queue_delay)
        self.total_delay.observe(total_delay)
        self._delays.append(total_delay)

    def finished(self, steps: int, lease_lost: bool) -> None:
        self.runs.inc()
        self.steps.inc(steps)
        self._window_steps += steps
        if lease_lost:
            self.lost.inc()
            self._lost += 1
            self._update_ratio()

    def _update_ratio(self) -> None:
        if self._acquired:
            self.acquisition_ratio.set((self._acquired - self._lost) / self._acquired)

    def maybe_log(self, queue_depth: int, running: int) -> dict[str, Any] | None:
        """Emit the periodic summary when its window is over; returns what it logged."""
        elapsed = time.monotonic() - self._window_start
        if elapsed < self._event_every:
            return None
        delays = sorted(self._delays)
        summary: dict[str, Any] = {
            "steps_per_second": round(self._window_steps / elapsed, 1),
            "queue_depth": queue_depth,
            "running": running,
            "leases_acquired": self._acquired,
            "leases_lost": self._lost,
        }
        if len(delays) >= 2:
            cuts = statistics.quantiles(delays, n=100, method="inclusive")
            summary.update(total_delay_p50=round(cuts[49], 4), total_delay_p95=round(cuts[94], 4),
                           total_delay_max=round(delays[-1], 4))
        log.info("respirate metrics", respirate_metrics=summary)
        self._window_start = time.monotonic()
        self._window_steps = 0
        self._delays.clear()
        return summary
