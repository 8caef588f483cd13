"""The benchmark's figures as one table (rich on the terminal, Markdown on disk), the aims judged,
and the files: reports/bench/bench-<UTC stamp>.json and .md, copied to latest.json / latest.md.

Every figure a full run produces is listed in REQUIRED (a dotted path into the JSON); a figure
that could not be measured is null with a note saying why, never absent.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

#: dotted paths of the figures every report holds, section by section
REQUIRED: dict[str, list[str]] = {
    "verdict": ["runs", "validate_median_s", "floor_median_s", "ratio", "validate_runs_s",
                "floor_runs_s", "validate_verdict", "floor_verdict"],
    "conversion": ["keys_total", "branch_keys", "driver.rows", "driver.backup_s", "driver.convert_s",
                   "driver.rows_per_s", "floor.rows", "floor.seconds", "floor.rows_per_s",
                   "throughput_ratio", "load.baseline.requests", "load.baseline.errors",
                   "load.baseline.p50_ms", "load.baseline.p99_ms", "load.during_conversion.requests",
                   "load.during_conversion.errors", "load.during_conversion.p50_ms",
                   "load.during_conversion.p99_ms", "load.p99_ratio",
                   "locks.api_during_conversion.longest_ms", "locks.api_during_conversion.over_1s"],
    "monitor": ["cycles", "cpu_share_percent", "cpu_ms_per_cycle", "rss_mib_after_warmup",
                "rss_mib_at_end", "rss_slope_kib_per_100_cycles", "start_lag_p50_ms",
                "start_lag_p95_ms", "start_lag_max_ms", "missed_slots"],
    "startup": ["sandbox_up_s", "sandbox_up_samples_s", "demo_s"],
}
MACHINE = ["cpu_model", "cores_logical", "ram_gib", "python", "postgresql"]


def lookup(data: dict[str, Any], dotted: str) -> Any:
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


# --- aims --------------------------------------------------------------------------------------


@dataclass
class Aim:
    name: str
    aim: str
    measured: str
    met: bool | None  # None: not measured
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


#: the conversion's throughput aim (issue 14): the driver, backup included, against one UPDATE
THROUGHPUT_FLOOR_SHARE = 0.8
THROUGHPUT_AIM = "throughput at least 0.8x the floor"


def p99_judged(conversion: dict[str, Any]) -> tuple[float | None, str]:
    """The p99 ratio that the aim is judged on: the round's, or with --conversion-rounds the
    median of the rounds'; and the words that say which."""
    medians = conversion.get("medians")
    if not medians:
        return conversion["load"]["p99_ratio"], ""
    return medians["p99_ratio"], f"; median of {len(conversion['rounds'])} rounds"


def judge(conversion: dict[str, Any] | None) -> list[Aim]:
    """The issue's four aims for the conversion, with a note on each one missed: why, and what
    would close it, from the figures themselves."""
    if not conversion:
        return []
    load, locks = conversion["load"], conversion["locks"]
    driver, floor = conversion["driver"], conversion["floor"]
    base, during = load["baseline"], load["during_conversion"]
    p99_ratio, of_rounds = p99_judged(conversion)
    cpu = conversion.get("cpu_busy_percent", {})
    cpu_text = (f"the machine's CPU was {cpu.get('during_conversion')}% busy during the conversion, "
                f"{cpu.get('baseline')}% before" if cpu else "")
    longest = locks["api_during_conversion"]["longest_ms"]
    pg_log = locks.get("postgres_log", {})
    logged = pg_log.get("waits_over_deadlock_timeout") if pg_log.get("log_lock_waits") == "on" else None
    aims = [
        Aim("no request fails", "0 failed requests while the driver converts",
            f"{during['errors']} of {during['requests']} failed"
            + (f" ({during['error_kinds']})" if during["errors"] else ""),
            during["errors"] == 0),
        Aim("p99 under twice the baseline", "p99 during < 2 x p99 before",
            f"{p99_ratio}x{of_rounds}; in the round shown {during['p99_ms']} ms vs {base['p99_ms']} ms"
            if of_rounds else f"{during['p99_ms']} ms vs {base['p99_ms']} ms ({p99_ratio}x)",
            None if p99_ratio is None else p99_ratio < 2),
        Aim("no block over one second", "longest lock wait of an API session <= 1000 ms",
            f"{longest} ms longest wait seen (sampled every {locks['sample_interval_ms']:g} ms; "
            f"{locks['api_during_conversion']['waits_seen']} waits); latency bound "
            f"{load['max_excess_over_baseline_p50_ms']} ms; "
            + ("PostgreSQL's log not read" if logged is None else
               f"{logged} waits over {pg_log.get('deadlock_timeout_ms')} ms in PostgreSQL's log"),
            locks["api_during_conversion"]["over_1s"] == 0 and longest <= 1000 and not logged),
        Aim(THROUGHPUT_AIM, f"driver rows/s (backup included) >= {THROUGHPUT_FLOOR_SHARE} x plain UPDATE",
            f"{driver['rows_per_s']:,} vs {floor['rows_per_s'] or 0:,} rows/s "
            f"({conversion['throughput_ratio']}x{of_rounds})",
            None if conversion["throughput_ratio"] is None
            else conversion["throughput_ratio"] >= THROUGHPUT_FLOOR_SHARE),
    ]
    per_batch_ms = 1000 * driver["convert_s"] / driver["batches"] if driver["batches"] else 0
    floor_batch_ms = 1000 * floor["seconds"] * driver["batch_size"] / floor["rows"] if floor["rows"] else 0
    on_copy = load.get("during_floor_on_copy", {})
    floor_p99 = on_copy.get("p99_ms")
    floor_effect = (f"the plain UPDATE, run on the copy (no row shared with the API, so no lock), "
                    f"took the same load's p99 to {floor_p99} ms "
                    f"({floor_p99 / base['p99_ms']:.1f}x the baseline) by CPU and I/O alone"
                    if floor_p99 and base["p99_ms"] else "")
    for aim in aims:
        if aim.met is not False:
            continue
        if aim.name == THROUGHPUT_AIM:
            backup_share = driver["backup_s"] / driver["total_s"] if driver["total_s"] else 0
            convert_only = driver["rows"] / driver["convert_s"] if driver["convert_s"] else 0
            aim.note = (
                f"why: the Backup step (pre-image table, checksum, CSV, affected tenants) takes "
                f"{driver['backup_s']} s, {backup_share:.0%} of the driver's time, work the plain UPDATE "
                f"does not do; the conversion alone runs {convert_only:,.0f} rows/s, {driver['batches']} "
                f"batches of {driver['batch_size']} at {per_batch_ms:.0f} ms each, where the floor spends "
                f"{floor_batch_ms:.0f} ms per {driver['batch_size']} rows (one sequential pass, one commit). "
                "What would close it: less work outside the UPDATE (a cheaper backup step: it is "
                f"{driver['backup_s']} s of the {driver['total_s']} s), and less per batch; measure other "
                "batch sizes with `python -m bench --only conversion --batch-size N` before changing "
                "[run] batch_size: larger is not always faster, the planner may change the UPDATE's plan.")
        elif aim.name == "p99 under twice the baseline":
            steps = {name: load.get(key, {}).get("p99_ms") for name, key in
                     (("Backup", "during_backup_step"), ("ConvertKeys", "during_convert_keys_step"))}
            by_step = ", ".join(f"{name} {p99} ms ({p99 / base['p99_ms']:.1f}x)"
                                for name, p99 in steps.items() if p99 and base["p99_ms"])
            limit = 2 * (base["p99_ms"] or 0)
            over = [name for name, p99 in steps.items() if p99 and limit and p99 >= limit]
            aim.note = (
                f"why: no lock explains it (longest lock wait of an API session {longest} ms); "
                f"{cpu_text}; p99 by step: {by_step}; {floor_effect}. On this 2-core machine the "
                "database, the API, the load and the driver share two cores, so requests queue for CPU "
                "while any bulk statement runs. What would close it: CPU headroom for the API while "
                "the driver runs (" + (f"over the limit: {', '.join(over)}" if over else "no single step is "
                                       "over the limit, their sum is") + "): the database on cores of its "
                "own (as in production), or less CPU per key in those steps.")
        elif aim.name == "no block over one second":
            aim.note = (f"why: a wait on {locks['api_during_conversion']['longest_blocked_by']} in "
                        f"{locks['api_during_conversion']['longest_query']!r}. What would close it: a "
                        "smaller [run] batch_size, so that each batch holds its rows for less time.")
        elif aim.name == "no request fails":
            aim.note = ("why: see error_kinds and the sandbox's API log (a 500 DATABASE_ERROR means the "
                        "API's pool waited over 4 s for a connection). What would close it: shorter "
                        "batches, so that the API's sessions are never held behind the driver's locks.")
    return aims


# --- the table ---------------------------------------------------------------------------------


Row = tuple[str, str, str, str, str]  # figure, measured, floor/baseline, ratio, aim


def times(value: float | None, of: float | None) -> float | None:
    return round(value / of, 2) if value is not None and of else None


def _s(value: Any, unit: str = "s", digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f} {unit}".strip()
    return f"{value:,} {unit}".strip() if isinstance(value, int) else f"{value} {unit}".strip()


def rows(report: dict[str, Any]) -> list[tuple[str, list[Row]]]:
    sections: list[tuple[str, list[Row]]] = []
    aims = {a["name"]: a for a in report.get("aims", [])}

    def met(name: str) -> str:
        aim = aims.get(name)
        if not aim or aim["met"] is None:
            return "-"
        return f"{aim['aim']}: {'met' if aim['met'] else 'MISSED'}"

    titles = {"verdict": "1. Time to verdict", "conversion": "2. FASE 2 conversion",
              "monitor": "3. Monitor cost", "startup": "4. Start-up", "failfast": "5. Fail fast"}
    measured = {}
    for name, title in titles.items():
        section = report.get(name)
        if section and "error" in section:
            sections.append((title, [("not measured", str(section["error"]), "", "", "")]))
        elif section:
            measured[name] = section
    verdict = measured.get("verdict")
    if verdict:
        aim = verdict.get("aim_met")
        sections.append(("1. Time to verdict", [
            (f"rollback validate fase2 (median of {verdict['runs']})", _s(verdict["validate_median_s"]),
             f"floor {_s(verdict['floor_median_s'])}", _s(verdict["ratio"], "x"),
             "-" if aim is None else f"{verdict['aim']}: {'met' if aim else 'MISSED'}"),
            ("  CPU time", _s(verdict.get("validate_cpu_median_s")),
             f"floor {_s(verdict.get('floor_cpu_median_s'))}", _s(verdict.get("cpu_ratio"), "x"), ""),
            ("verdict given", str(verdict["validate_verdict"]), str(verdict["floor_verdict"]), "", ""),
            *[(f"  {p['endpoints']} endpoint(s), {p['tenants']} tenants (median of {p['runs']})",
               f"{_s(p['validate_median_s'])} ({_s(p['validate_cpu_median_s'])} CPU)",
               f"floor {_s(p['floor_median_s'])} ({_s(p['floor_cpu_median_s'])} CPU)",
               _s(p["ratio"], "x"), f"CPU {_s(p['cpu_ratio'], 'x')}")
              for p in verdict.get("scaling", [])],
        ]))
    conv = measured.get("conversion")
    if conv:
        load, locks, driver, floor = conv["load"], conv["locks"], conv["driver"], conv["floor"]
        base, during, on_copy = load["baseline"], load["during_conversion"], load["during_floor_on_copy"]
        title = f"2. FASE 2 conversion ({conv['keys_total']:,} keys, {conv['branch_keys']:,} branch)"
        p99_ratio, _ = p99_judged(conv)
        rounds = conv.get("rounds", [])
        if rounds:
            title += (f": medians of {len(rounds)} rounds, the figures below from round "
                      f"{conv['round_shown']} (the median throughput)")
        sections.append((title, [
            *[(f"  round {r['round']}" + (" (floor first)" if r["floor_first"] else ""),
               f"{r['driver_s']} s, p99 {_s(r['during_p99_ms'], 'ms', 1)}",
               f"floor {r['floor_s']} s, p99 before {_s(r['baseline_p99_ms'], 'ms', 1)}",
               f"{_s(r['throughput_ratio'], 'x')}, p99 {_s(r['p99_ratio'], 'x')}", "")
              for r in rounds],
            ("driver: Backup + ConvertKeys", f"{driver['rows_per_s']:,} rows/s",
             f"floor {floor['rows_per_s']:,} rows/s",
             _s(conv["throughput_ratio"], "x") + (" (median)" if rounds else ""),
             met(THROUGHPUT_AIM)),
            ("  floor alone (nothing else running)", "",
             f"{conv['floor_quiet']['rows_per_s']:,} rows/s in {conv['floor_quiet']['seconds']} s",
             _s(conv["throughput_ratio_to_quiet_floor"], "x"), "reference only"),
            ("  time: backup + conversion", f"{driver['backup_s']} + {driver['convert_s']} s",
             f"floor {floor['seconds']} s", "",
             f"{driver['batches']} batches of at most {driver['batch_size']}"
             + (f" (sizes {driver['batch_sizes'][0]}-{driver['batch_sizes'][1]})"
                if len(driver.get("batch_sizes") or []) == 2 else "")
             + f", {driver['retries']} retries"
             + (f", on {driver['connections']} connections" if driver.get("connections", 1) > 1 else "")),
            *([("  driver alone (nothing else running)",
                f"{conv['driver_quiet']['rows_per_s']:,} rows/s",
                f"quiet floor {conv['floor_quiet']['rows_per_s']:,} rows/s",
                _s(conv.get("quiet_throughput_ratio"), "x"),
                f"backup {conv['driver_quiet']['backup_s']} + conversion "
                f"{conv['driver_quiet']['convert_s']} s")] if "driver_quiet" in conv else []),
            *[(f"  scale: {p['keys_total']:,} keys ({p['branch_keys']:,} branch)",
               f"{p['driver']['rows_per_s']:,} rows/s", f"floor {p['floor']['rows_per_s']:,} rows/s",
               _s(p["ratio"], "x"),
               f"nothing else running; {p['driver']['total_s']} s vs {p['floor']['seconds']} s; "
               f"rows/s {p['driver_rows_per_s_vs_smallest']}x the smallest size's")
              for p in conv.get("scale", {}).get("points", [])],
            ("read load: failed requests", f"{during['errors']} of {during['requests']}",
             f"before {base['errors']} of {base['requests']}", "", met("no request fails")),
            ("read load: p99", _s(during["p99_ms"], "ms", 1), f"before {_s(base['p99_ms'], 'ms', 1)}",
             _s(p99_ratio, "x") + (" (median)" if rounds else ""), met("p99 under twice the baseline")),
            ("read load: p50", _s(during["p50_ms"], "ms", 1), f"before {_s(base['p50_ms'], 'ms', 1)}",
             "", ""),
            *[(f"  p99 during the {step} step", _s(load[key]["p99_ms"], "ms", 1),
               f"before {_s(base['p99_ms'], 'ms', 1)}", _s(times(load[key]["p99_ms"], base["p99_ms"]), "x"),
               f"{load[key]['requests']} requests in {load[key]['seconds']} s")
              for step, key in (("Backup", "during_backup_step"), ("ConvertKeys", "during_convert_keys_step"))
              if key in load],
            ("  p99 while the floor UPDATE runs on the copy", _s(on_copy["p99_ms"], "ms", 1),
             f"before {_s(base['p99_ms'], 'ms', 1)}", _s(times(on_copy["p99_ms"], base["p99_ms"]), "x"),
             "no shared rows: CPU and I/O only"),
            ("read load: throughput", _s(during["requests_per_s"], "req/s", 1),
             f"before {_s(base['requests_per_s'], 'req/s', 1)}", "",
             f"offered {load['offered_requests_per_s']:g} req/s"),
            ("longest lock wait of the load", _s(locks["api_during_conversion"]["longest_ms"], "ms", 1),
             f"latency bound {_s(load['max_excess_over_baseline_p50_ms'], 'ms', 1)}", "",
             met("no block over one second")),
        ]))
    mon = measured.get("monitor")
    if mon:
        sections.append((f"3. Monitor cost ({_s(mon.get('cycles'), 'cycles', 0)} of 1 s)", [
            ("CPU, steady state", _s(mon.get("cpu_share_percent"), "% of one core", 1),
             _s(mon.get("cpu_ms_per_cycle"), "ms CPU per cycle", 1), "", ""),
            ("resident memory", f"{_s(mon.get('rss_mib_after_warmup'), 'MiB', 1)} -> "
             f"{_s(mon.get('rss_mib_at_end'), 'MiB', 1)}",
             _s(mon.get("rss_slope_kib_per_100_cycles"), "KiB / 100 cycles", 0), "",
             str(mon.get("memory_verdict"))),
            ("cycle start drift p50 / p95 / max", f"{_s(mon.get('start_lag_p50_ms'), '', 1)} / "
             f"{_s(mon.get('start_lag_p95_ms'), '', 1)} / {_s(mon.get('start_lag_max_ms'), 'ms', 1)}",
             f"{_s(mon.get('missed_slots'), 'slots missed', 0)}", "", ""),
        ]))
    start = measured.get("startup")
    if start:
        keyed = "; ".join(f"--keys {k}: {v} s" for k, v in start.get("sandbox_up_with_keys_s", {}).items())
        sections.append(("4. Start-up", [
            ("rollback sandbox up (default size)", _s(start["sandbox_up_s"]),
             f"samples {start['sandbox_up_samples_s']}", "", keyed),
            ("rollback demo", _s(start.get("demo_s")), "", "", start.get("demo_note") or ""),
        ]))
    fast = measured.get("failfast")
    if fast:
        lines: list[Row] = []
        for case, met_it in fast["met"].items():
            v, h = fast[case]["validate_all"], fast[case]["health_once"]
            lines.append((f"{case}: validate all / health once", f"{v['seconds']} s / {h['seconds']} s",
                          f"exit {v['exit_code']} / {h['exit_code']}", "",
                          f"within {fast['aim_s']:g} s: {'met' if met_it else 'MISSED'}"
                          + ("" if h["report_written"] else "; health wrote NO report")))
        sections.append(("5. Fail fast", lines))
    return sections


HEADERS = ("figure", "measured", "floor / before", "ratio", "aim / note")


def machine_line(report: dict[str, Any]) -> str:
    m = report["machine"]
    return (f"{m['cpu_model']}, {m['cores_logical']} cores, {m['ram_gib']} GiB RAM; {m['python']}; "
            f"PostgreSQL {m['postgresql']}; load average at start {m['load_average_at_start']}, "
            f"at end {m.get('load_average_at_end')}")


def print_table(report: dict[str, Any], console: Console) -> None:
    table = Table(title=f"rollback benchmark {report['stamp']} ({report['duration_s']:.0f} s)",
                  caption=machine_line(report), show_lines=False)
    for header in HEADERS:
        table.add_column(header, overflow="fold")
    for title, section in rows(report):
        table.add_row(f"[bold]{title}[/]", "", "", "", "")
        for row in section:
            styled = [escape(cell) for cell in row]
            if "MISSED" in row[4]:
                styled[4] = f"[red]{styled[4]}[/]"
            elif row[4].endswith(": met"):
                styled[4] = f"[green]{styled[4]}[/]"
            table.add_row(*styled)
    console.print(table)
    for note in notes(report):
        console.print(f"  [yellow]note[/] {escape(note)}", soft_wrap=True)


def notes(report: dict[str, Any]) -> list[str]:
    found = [f"{a['name']} missed: {a['note']}" for a in report.get("aims", []) if a["met"] is False]
    found += report.get("notes", [])
    return found


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"# Benchmark {report['stamp']}", "",
             f"`{' '.join(['python -m bench', *report['argv']])}`, {report['duration_s']:.0f} s "
             f"on {m['cpu_model']} ({m['cores_logical']} cores, {m['ram_gib']} GiB RAM), {m['python']}, "
             f"PostgreSQL {m['postgresql']}, toolkit {m['toolkit_commit']}. Load average "
             f"{m['load_average_at_start']} at start, {m.get('load_average_at_end')} at end.", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for title, section in rows(report):
        lines.append(f"| **{title}** | | | | |")
        for row in section:
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    if report.get("aims"):
        lines += ["", "## Aims of the conversion", ""]
        for aim in report["aims"]:
            state = "not measured" if aim["met"] is None else "met" if aim["met"] else "**missed**"
            lines.append(f"- {aim['name']} ({aim['aim']}): {aim['measured']}: {state}"
                         + (f". {aim['note']}" if aim["note"] else ""))
    other = report.get("notes", [])
    if other:
        lines += ["", "## Notes", "", *[f"- {n}" for n in other]]
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"bench-{report['stamp']}.json"
    md_path = out / f"bench-{report['stamp']}.md"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md_path.write_text(markdown(report))
    shutil.copyfile(json_path, out / "latest.json")
    shutil.copyfile(md_path, out / "latest.md")
    return json_path, md_path
