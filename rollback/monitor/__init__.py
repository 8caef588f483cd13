"""The health monitor: continuous checks, damped alerts, Prometheus metrics, HTML health reports.

    probes (rollback.probes)  ->  checks.evaluate  ->  alerts.AlertBook  ->  notify.Notifier
                                        │                                    store (logs/)
                                        └──────────> metrics, view          report (from store)

    loop      Monitor: the fixed schedule and the steps of one cycle
    checks    the four checks (API available, response time, error rate, database connection)
    alerts    damping: fire after K failing cycles, resolve after M passing, remind every R min
    notify    delivery through Apprise on a thread of its own
    store     daily log and history files, alert files, the persisted alert state
    metrics   Prometheus registry, /metrics server, Pushgateway pusher
    view      the live terminal view, or plain lines
    report    the self-contained HTML report from the history
    schedule  the fixed schedule and duration parsing
"""

from __future__ import annotations

from rollback.monitor.loop import Monitor, Options, Summary

__all__ = ["Monitor", "Options", "Summary"]
