"""Prometheus metrics of the monitor: served over HTTP while it runs, or pushed after each cycle.

    rollback_health_up                                    1 when no check failed in the last cycle
    rollback_health_check_up{check}                       1 passed, 0 failed or not measurable
    rollback_health_check_last_success_timestamp_seconds{check}
    rollback_health_latency_p95_seconds{endpoint}         NaN when not measured this cycle
    rollback_health_latency_p50_seconds{endpoint}
    rollback_health_error_ratio                           of the last cycle's sample; NaN if none
    rollback_health_database_connect_seconds
    rollback_health_cycle_duration_seconds
    rollback_health_cycles_total / rollback_health_missed_cycles_total
    rollback_health_alert_firing{check}                   1 while an incident is open
    rollback_health_alerts_total{check,kind}              notices: alert, reminder, recovery
    rollback_health_last_cycle_timestamp_seconds

Every monitor has its own registry (never the process-wide default), so several can live in one
process and nothing else leaks into what is pushed. Label sets are fixed by the configuration:
the series do not grow with the number of cycles.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, push_to_gateway, start_http_server

from rollback.errors import UsageError
from rollback.monitor.alerts import AlertBook, AlertEvent
from rollback.monitor.checks import CHECKS, CheckResult, Measurements, Status

NAN = math.nan


class Metrics:
    def __init__(self, endpoints: Sequence[str], checks: Iterable[str] = CHECKS) -> None:
        self._paths = tuple(endpoints)
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.up = Gauge("rollback_health_up", "1 when no check failed in the last cycle", registry=r)
        self.check_up = Gauge("rollback_health_check_up",
                              "1 when the check passed in the last cycle, 0 when it failed or could not "
                              "be measured", ["check"], registry=r)
        self.last_success = Gauge("rollback_health_check_last_success_timestamp_seconds",
                                  "Unix time of the check's last passing cycle", ["check"], registry=r)
        self.p95 = Gauge("rollback_health_latency_p95_seconds",
                         "p95 response time of the endpoint's sample in the last cycle", ["endpoint"],
                         registry=r)
        self.p50 = Gauge("rollback_health_latency_p50_seconds",
                         "Median response time of the endpoint's sample in the last cycle", ["endpoint"],
                         registry=r)
        self.error_ratio = Gauge("rollback_health_error_ratio",
                                 "Share of the last cycle's requests that failed (5xx, timeout, connection)",
                                 registry=r)
        self.db_connect = Gauge("rollback_health_database_connect_seconds",
                                "Time to open a database connection in the last cycle", registry=r)
        self.cycle_duration = Gauge("rollback_health_cycle_duration_seconds",
                                    "How long the last cycle took", registry=r)
        self.last_cycle = Gauge("rollback_health_last_cycle_timestamp_seconds",
                                "Unix time the last cycle started", registry=r)
        self.cycles = Counter("rollback_health_cycles", "Cycles run", registry=r)
        self.missed = Counter("rollback_health_missed_cycles",
                              "Scheduled cycles skipped because an earlier one overran", registry=r)
        self.firing = Gauge("rollback_health_alert_firing", "1 while the check has an open incident",
                            ["check"], registry=r)
        self.alerts = Counter("rollback_health_alerts", "Notices sent, by kind", ["check", "kind"],
                              registry=r)
        for name in checks:
            self.check_up.labels(name)
            self.firing.labels(name).set(0)
            self.last_success.labels(name)
            for kind in ("alert", "reminder", "recovery"):
                self.alerts.labels(name, kind)
        for path in endpoints:
            self.p95.labels(path).set(NAN)
            self.p50.labels(path).set(NAN)
        self.error_ratio.set(NAN)
        self.db_connect.set(NAN)
        self._server: Any = None

    def observe(self, started_unix: float, duration_s: float, m: Measurements,
                checks: dict[str, CheckResult], book: AlertBook, events: Sequence[AlertEvent]) -> None:
        self.cycles.inc()
        self.cycle_duration.set(duration_s)
        self.last_cycle.set(started_unix)
        self.up.set(0 if any(c.status is Status.FAIL for c in checks.values()) else 1)
        for name, result in checks.items():
            if result.status is Status.SKIPPED:
                continue
            self.check_up.labels(name).set(1 if result.status.passing else 0)
            if result.status.passing:
                self.last_success.labels(name).set(started_unix)
        sampled = {s.path: s for s in m.samples}
        for path in self._paths:
            s = sampled.get(path)
            self.p95.labels(path).set(NAN if s is None or s.p95_ms is None else s.p95_ms / 1000)
            self.p50.labels(path).set(NAN if s is None or s.p50_ms is None else s.p50_ms / 1000)
        rate = m.error_rate
        self.error_ratio.set(NAN if rate is None else rate)
        db = m.database
        self.db_connect.set(NAN if db is None or db.connect_ms is None else db.connect_ms / 1000)
        for event in events:
            self.alerts.labels(event.incident.check, str(event.kind)).inc()
        for name, state in book.states.items():
            self.firing.labels(name).set(1 if state.incident else 0)

    def serve(self, port: int, address: str) -> None:
        try:
            self._server, _ = start_http_server(port, addr=address, registry=self.registry)
        except OSError as exc:
            raise UsageError(f"--metrics-port {port}: cannot listen on {address}:{port} "
                             f"({exc.strerror or exc}); pick a free port") from None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class Pusher:
    """Pushes the registry to a Pushgateway from a thread of its own, the latest state only.

    A push still running when the next cycle ends is not queued twice: the next push sends the
    newest values anyway. A failure is logged once when it starts and once when pushing works
    again, not every cycle.
    """

    def __init__(self, gateway: str, registry: CollectorRegistry, grouping: dict[str, str],
                 log: Callable[[str], None], timeout_s: float = 10.0) -> None:
        self.gateway, self.registry, self.grouping = gateway, registry, grouping
        self._log, self._timeout = log, timeout_s
        self._wake: queue.Queue[bool] = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None
        self._failing: str | None = None
        self.pushed = 0
        self.failures = 0

    def push_now(self) -> bool:
        """Push on the calling thread; False (and a log line) when it failed."""
        try:
            push_to_gateway(self.gateway, job="rollback_health", registry=self.registry,
                            grouping_key=self.grouping, timeout=self._timeout)
        except Exception as exc:  # URLError, HTTPError, timeouts: the monitor carries on
            self.failures += 1
            reason = f"{type(exc).__name__}: {exc}"[:200]
            if reason != self._failing:
                self._log(f"PUSHGATEWAY push to {self.gateway} failed: {reason} (monitoring goes on)")
            self._failing = reason
            return False
        self.pushed += 1
        if self._failing is not None:
            self._log(f"PUSHGATEWAY push to {self.gateway} works again")
            self._failing = None
        return True

    def request(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="pushgateway", daemon=True)
            self._thread.start()
        with contextlib.suppress(queue.Full):  # a push is pending already: it sends the newest values
            self._wake.put_nowait(True)

    def _work(self) -> None:
        while self._wake.get():
            self.push_now()

    def close(self) -> None:
        """Stop the thread, then push the final state once more."""
        if self._thread is not None:
            while True:
                try:
                    self._wake.get_nowait()
                except queue.Empty:
                    break
            self._wake.put(False)
            self._thread.join(self._timeout + 1)
            self._thread = None
        self.push_now()


def push_validation(gateway: str, target: str, results: Iterable[tuple[str, bool]], healthy: bool,
                    log: Callable[[str], None]) -> bool:
    """Push the verdict of a one-off `rollback health` (the pytest checks) to a Pushgateway.

    Same metric names as the monitor where they mean the same: `rollback_health_up`, and
    `rollback_health_check_up{check=<check function>}` per health check.
    """
    registry = CollectorRegistry()
    Gauge("rollback_health_up", "1 when no check failed in the last run", registry=registry).set(
        1 if healthy else 0)
    up = Gauge("rollback_health_check_up", "1 when the check passed in the last run", ["check"],
               registry=registry)
    for name, passed in results:
        up.labels(name).set(1 if passed else 0)
    Gauge("rollback_health_last_run_timestamp_seconds", "Unix time the last run finished",
          registry=registry).set_to_current_time()
    return Pusher(gateway, registry, {"target": target, "mode": "once"}, log).push_now()
