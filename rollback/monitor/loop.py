"""The continuous monitor: probe, judge, record, alert, export, on a fixed schedule.

A cycle is a short list of steps, all in this process (no pytest per cycle):

    measure   probes: GET /health, a concurrent sample of each endpoint, connect + SELECT 1
    judge     the four checks against the thresholds (`checks.evaluate`)
    alert     the damping state machine (`alerts.AlertBook`) -> notices, alert files
    record    one history line, one log line, the alert state
    export    Prometheus gauges; a push to the Pushgateway (on its own thread)
    show      the live view

The HTTP client, its connections and the probe threads are built once per run and reused, and
nothing grows with the number of cycles: history goes to disk, only counters stay in memory.
Every answer is bounded by [health] probe_timeout_s, body included (`rollback.http`), so a
cycle always ends, and with it a run asked to stop (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from rollback.config import Settings
from rollback.http import bounded_client
from rollback.monitor import store
from rollback.monitor.alerts import AlertBook, AlertEvent, EventKind, Incident, Policy
from rollback.monitor.checks import CHECKS, SLOW_DOWN, Cycle, Measurements, Status, evaluate
from rollback.monitor.metrics import Metrics, Pusher
from rollback.monitor.notify import Message, Notifier, compose
from rollback.monitor.schedule import Schedule, format_duration
from rollback.monitor.timefmt import iso, utc_now
from rollback.monitor.view import View, cycle_line
from rollback.probes import USER_AGENT, probe_api_health, probe_database, sample_endpoints


@dataclass(frozen=True)
class Options:
    interval_s: float
    duration_s: float | None = None
    max_cycles: int | None = None
    metrics_port: int | None = None
    pushgateway: str | None = None

    def __post_init__(self) -> None:
        if not self.interval_s > 0 or math.isinf(self.interval_s):
            raise ValueError("interval must be a positive number of seconds")


@dataclass
class Summary:
    """How a run went, printed when it stops."""

    started: datetime
    ended: datetime | None = None
    stopped_by: str = "running"
    cycles: int = 0
    missed: int = 0
    max_lag_ms: float = 0.0
    statuses: dict[str, Counter[str]] = field(default_factory=dict)
    alerts: int = 0
    recoveries: int = 0
    reminders: int = 0
    open_incidents: list[Incident] = field(default_factory=list)
    delivered: int = 0
    delivery_failed: int = 0
    files: list[Path] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when nothing is failing at the end; 1 while an incident is still open."""
        return 1 if self.open_incidents else 0

    def lines(self) -> list[str]:
        lasted = format_duration(((self.ended or utc_now()) - self.started).total_seconds())
        cycles = f"{self.cycles} cycle{'' if self.cycles == 1 else 's'}"
        out = [f"stopped ({self.stopped_by}) after {cycles} in {lasted}; {self.missed} scheduled "
               f"slots missed; latest start {self.max_lag_ms:.0f} ms after its slot"]
        for name, title in CHECKS.items():
            seen = self.statuses.get(name, Counter())
            ok = seen["pass"] + seen["warn"]
            measured = ok + seen["fail"]
            if not measured:
                why = "skipped" if seen["skipped"] else "never measured"
                out.append(f"  {title:<20} {why}")
                continue
            line = f"  {title:<20} ok in {ok}/{measured} cycles ({ok / measured:.1%})"
            if seen["unknown"]:
                line += f", not measurable in {seen['unknown']}"
            out.append(line)
        out.append(f"incidents: {self.alerts} alerted, {self.recoveries} recovered, "
                   f"{len(self.open_incidents)} still open"
                   + (f"; {self.reminders} reminders" if self.reminders else ""))
        for inc in self.open_incidents:
            out.append(f"  OPEN {inc.title} failing since {iso(inc.started)}: {inc.last_detail}")
        if self.delivered or self.delivery_failed:
            out.append(f"notices: {self.delivered} delivered, {self.delivery_failed} failed")
        if self.files:
            out.append("written: " + ", ".join(str(path) for path in self.files))
        return out


class Monitor:
    def __init__(self, settings: Settings, options: Options, view: View) -> None:
        self.settings, self.options, self.view = settings, options, view
        health = settings.health
        self.api_key = settings.require_api_key()
        self.database_url = (settings.secrets.database_url.get_secret_value()
                             if settings.secrets.database_url else None)
        self.logs_dir = settings.paths.logs_dir
        self.policy = Policy(health.fire_after, health.resolve_after,
                             timedelta(minutes=health.remind_minutes))
        notify_urls = settings.secrets.notify_urls
        self.notifier = Notifier(notify_urls.get_secret_value() if notify_urls else None, self._log_line)
        self.metrics = Metrics(settings.health_endpoints)
        self.pusher = (Pusher(options.pushgateway, self.metrics.registry,
                              {"target": settings.target.name, "mode": "continuous"},
                              self._log_line) if options.pushgateway else None)
        self.history = store.History(self.logs_dir)
        self.check_log = store.DailyFile(self.logs_dir, store.CHECK_LOG, ".log")
        self.target_id = settings.identity.id  # alert state is kept per target
        self.book = AlertBook.from_json(self.policy,
                                        store.load_state(self.logs_dir, self.target_id) or {})
        self._stop = threading.Event()
        self._stop_reason = "stopped"
        self._saved_state: Any = None
        self._budget_checked = False
        self._notices: Counter[EventKind] = Counter()
        self._missed = 0
        self._write_error: str | None = None

    # --- control -----------------------------------------------------------------------------

    def stop(self, reason: str = "stopped") -> None:
        """Ask the run to end after the cycle in progress (any thread, or a signal handler)."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """First Ctrl-C or SIGTERM: finish this cycle, then stop. Second Ctrl-C: stop at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if signum == signal.SIGINT and self._stop.is_set():
                raise KeyboardInterrupt
            self.stop("interrupted" if signum == signal.SIGINT else "terminated")

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # --- run ---------------------------------------------------------------------------------

    def run(self) -> Summary:
        with self._signals():  # from the start: a stop asked during the setup is kept too
            return self._run()

    def _run(self) -> Summary:
        opts, health = self.options, self.settings.health
        summary = Summary(started=utc_now())
        # Every answer bounded by the probe timeout, body included: an API whose body never
        # ends is unavailable this cycle, and the cycle ends, so a stop is not kept waiting.
        client = bounded_client(self.settings.target.api_base_url, health.probe_timeout_s,
                                headers={"User-Agent": USER_AGENT},
                                max_connections=health.concurrency + 1)
        pool = ThreadPoolExecutor(max_workers=health.concurrency, thread_name_prefix="probe")
        try:
            if opts.metrics_port is not None:
                self.metrics.serve(opts.metrics_port, health.metrics_address)
            self.view.start()
            self._announce()
            schedule = Schedule.starting_now(opts.interval_s, time.monotonic)
            deadline = schedule.t0 + opts.duration_s if opts.duration_s else math.inf
            slot = 0
            while not self._stop.is_set():
                wait = schedule.due(slot) - time.monotonic()
                if wait > 0 and self._stop.wait(wait):
                    break
                lag_ms = max(0.0, (time.monotonic() - schedule.due(slot)) * 1000)
                cycle = self._cycle(summary.cycles + 1, slot, lag_ms, client, pool)
                summary.cycles += 1
                summary.max_lag_ms = max(summary.max_lag_ms, lag_ms)
                for name, result in cycle.checks.items():
                    summary.statuses.setdefault(name, Counter())[str(result.status)] += 1
                slot, missed = schedule.next_slot(slot)
                if opts.max_cycles is not None and summary.cycles >= opts.max_cycles:
                    self.stop(f"--max-cycles {opts.max_cycles} reached")
                elif schedule.due(slot) >= deadline:
                    self.stop(f"--duration {format_duration(opts.duration_s or 0)} reached")
                elif missed:
                    summary.missed += missed
                    self._missed += missed
                    self.metrics.missed.inc(missed)
                    self._log_line(f"SCHEDULE cycle {cycle.number} took {cycle.duration_ms:.0f} ms: "
                                   f"{missed} slot(s) of {opts.interval_s:g} s skipped")
        except KeyboardInterrupt:
            self._stop_reason = "interrupted at once"
        finally:
            self.view.stop()
            pool.shutdown(wait=False, cancel_futures=True)
            client.close()
            self.notifier.close()
            if self.pusher is not None:
                self.pusher.close()
            self.metrics.close()
            self.history.close()
            self.check_log.close()
        summary.ended = utc_now()
        summary.stopped_by = self._stop_reason
        summary.open_incidents = self.book.open_incidents
        summary.delivered, summary.delivery_failed = self.notifier.delivered, self.notifier.failed
        summary.alerts, summary.reminders, summary.recoveries = (
            int(self._notices[k]) for k in (EventKind.ALERT, EventKind.REMINDER, EventKind.RECOVERY)
        )
        summary.files = [self.history.path_for(summary.ended), self.check_log.path_for(summary.ended)]
        return summary

    def _announce(self) -> None:
        s, h = self.settings, self.settings.health
        self._log_line(
            f"START monitoring {s.target.name} at {s.target.api_base_url} "
            f"every {self.options.interval_s:g} s; fire after {h.fire_after}, resolve after "
            f"{h.resolve_after}, remind every {h.remind_minutes:g} min; {s.thresholds!r}"
        )
        if self.notifier.targets:
            self._log_line("alerts go to " + ", ".join(self.notifier.targets) + f" and {self.logs_dir}/")
        else:
            self._log_line(f"no ROLLBACK_NOTIFY_URLS: alerts are written to {self.logs_dir}/ only")
        if self.options.metrics_port is not None:
            self._log_line(f"metrics on http://{h.metrics_address}:{self.options.metrics_port}/metrics")
        if self.database_url is None:
            self._log_line("no DATABASE_URL: the database check is skipped")
        for inc in self.book.open_incidents:
            self._log_line(f"open incident carried over: {inc.title} failing since {iso(inc.started)}")

    # --- one cycle -----------------------------------------------------------------------------

    def _measure(self, client: httpx.Client, pool: ThreadPoolExecutor) -> Measurements:
        h = self.settings.health
        api = probe_api_health(client, self.settings.platform.health)
        samples = (sample_endpoints(client, self.api_key, self.settings.health_endpoints,
                                    h.samples_per_endpoint,
                                    pool=pool, bypass_cache=h.bypass_cache)
                   if api.available else [])
        db = probe_database(self.database_url, h.probe_timeout_s) if self.database_url else None
        return Measurements(api, samples, db)

    def _cycle(self, number: int, slot: int, lag_ms: float, client: httpx.Client,
               pool: ThreadPoolExecutor) -> Cycle:
        started, t = utc_now(), time.perf_counter()
        measurements = self._measure(client, pool)
        checks = evaluate(measurements, self.settings.thresholds)
        events = self.book.observe(started, checks)
        duration_ms = (time.perf_counter() - t) * 1000
        cycle = Cycle(number, slot, started, lag_ms, duration_ms, measurements, checks)
        # Notices first: whatever happens to the files below, people hear about it.
        messages = [self._notify(event) for event in events]
        try:
            for event, message in zip(events, messages, strict=True):
                self._record_event(event, message)
            self.history.append(self._record(cycle), started)
            self.check_log.write(cycle_line(cycle, self.book), started)
            self._save_state()
        except OSError as exc:  # a full disk must not silence the monitor: notices and metrics go on
            self._write_failed(exc)
        self.metrics.observe(started.timestamp(), duration_ms / 1000, measurements, checks, self.book, events)
        if self.pusher is not None:
            self.pusher.request()
        self._check_budget(measurements)
        self.view.cycle(cycle, self.book, self._missed)
        return cycle

    def _write_failed(self, exc: OSError) -> None:
        reason = f"cannot write under {self.logs_dir}/: {exc.strerror or exc}"
        if reason != self._write_error:  # once per distinct cause, not once per cycle
            self.view.note(f"WARNING {reason}; monitoring goes on")
            self._write_error = reason

    def _record(self, cycle: Cycle) -> dict[str, Any]:
        return {
            "kind": "cycle", "ts": iso(cycle.started), "cycle": cycle.number, "slot": cycle.slot,
            "lag_ms": round(cycle.lag_ms, 1), "duration_ms": round(cycle.duration_ms, 1),
            "checks": {
                name: {"status": str(c.status), "value": None if c.value is None else round(c.value, 4),
                       **({"detail": c.detail} if c.status is not Status.PASS else {})}
                for name, c in cycle.checks.items()
            },
            **cycle.measurements.to_record(),
        }

    def _notify(self, event: AlertEvent) -> Message:
        self._notices[event.kind] += 1
        message = compose(event, self.settings.target.name, self.settings.target.api_base_url)
        self.notifier.send(message)
        return message

    def _record_event(self, event: AlertEvent, message: Message) -> None:
        """The event in the history, the incident's alert file, a line in the log."""
        self.history.append(event.to_record(), event.at)
        state = "resolved" if event.kind is EventKind.RECOVERY else "firing"
        path = store.write_incident(self.logs_dir, event.incident, self.settings.target.name, state)
        self._log_line(f"{event.kind.upper()} {message.title} ({path.name})")

    def _save_state(self) -> None:
        # Only what changes a later decision: saving every cycle's pass count would rewrite
        # the file each second for nothing.
        m = self.policy.resolve_after
        material = {
            name: (s.fail_streak, min(s.pass_streak, m), s.incident.to_json() if s.incident else None)
            for name, s in self.book.states.items()
        }
        if material != self._saved_state:
            store.save_state(self.logs_dir, self.book.to_json(), self.target_id)
            self._saved_state = material

    def _check_budget(self, m: Measurements) -> None:
        """Once: warn when the sample would spend more than the key's per-minute rate limit."""
        limits = [s.rate_limit for s in m.samples if s.rate_limit]
        if self._budget_checked or not limits:
            return
        self._budget_checked = True
        h = self.settings.health
        endpoints = len(self.settings.health_endpoints)
        per_minute = h.samples_per_endpoint * endpoints * 60 / self.options.interval_s
        if per_minute > min(limits):
            self._log_line(f"WARNING the monitor sends {per_minute:.0f} requests/min with TEST_API_KEY, "
                           f"over its rate limit of {min(limits)}/min: {SLOW_DOWN}")

    def _log_line(self, line: str) -> None:
        """A notice for the operator: on the view and in the day's health-check log.

        Called from the delivery and push threads too, so it never raises for a file.
        """
        self.view.note(line)
        try:
            self.check_log.write(f"{iso(utc_now())} {line}")
        except OSError as exc:
            self._write_failed(exc)
