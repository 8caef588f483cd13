"""The context of one rollback run, handed from a rollback driver to the validation suite.

A driver writes it as JSON and passes its path with `--run-context PATH` (or the environment
variable `ROLLBACK_RUN_CONTEXT`); the checks read it through the `run_context` fixture. Only
`run_id` and `phase` are required; a check whose input is missing skips and says which key it
needed. Example, with every key:

    {
      "run_id": "20260122T101500Z-fase2",
      "phase": "fase2",                       # fase1 | fase2 | fase3
      "expected_version": "3f2c9a1...",        # the version /health must report after the deploy
      "baseline": {                            # measured before the rollback
        "p95_ms": {"/v1/leads": 120.0, "/v1/appointments": 95.0, "/v1/branches": 40.0},
        "error_rate": 0.002
      },
      "fase2_backup": {
        "schema": "rollback_backup",            # a dedicated schema ...
        "table": "api_keys_20260122T101500Z",   # ... holding a copy of every api_keys row the
                                                #     rollback converted, all columns, as before
        "csv": "logs/20260122T101500Z-fase2/api_keys_backup.csv",   # the same rows, with header
        "row_count": 37,
        "key_counts_before": {"total": 1204, "active": 1130}        # all of api_keys; active =
      },                                                            # is_active
      "fase3_db_option": 2,                    # 1 keep the database objects, 2 drop them
      "fase3_objects": ["idx_leads_branch_search", "get_low_stock_items(uuid, uuid)", ...]
    }

`baseline.p95_ms` is keyed by the endpoint's path. `fase3_objects` names indexes, views,
materialized views and functions, optionally schema-qualified; a function's argument list is
ignored. A relative `csv` path is taken from the directory of the run context file. Write the
file with `RunContext(...).write(path)` so that both sides agree.

Without `--run-context`, `rollback validate faseN` and `pytest -m faseN` take the context of
the last run of that phase against the same target (`last_run(settings, phase)`): the newest
`<logs_dir>/<run id>/run-context.json` of a run whose journal names this target
(`Settings.identity`: repository, database and API), and say which run it was.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rollback.config import Settings
from rollback.errors import ConfigError

Phase = Literal["fase1", "fase2", "fase3"]
_PHASES = ("fase1", "fase2", "fase3")


@dataclass(frozen=True)
class Baseline:
    """Latency and error rate measured before the rollback."""

    p95_ms: dict[str, float] = field(default_factory=dict)
    error_rate: float | None = None


@dataclass(frozen=True)
class KeyCounts:
    total: int
    active: int


@dataclass(frozen=True)
class Fase2Backup:
    """Where the FASE 2 driver saved the api_keys rows it converted from branch to tenant scope."""

    schema: str
    table: str
    row_count: int
    key_counts_before: KeyCounts
    csv: Path | None = None


@dataclass(frozen=True)
class RunContext:
    run_id: str
    phase: Phase
    expected_version: str | None = None
    baseline: Baseline | None = None
    fase2_backup: Fase2Backup | None = None
    fase3_db_option: Literal[1, 2] | None = None
    fase3_objects: tuple[str, ...] = ()
    source: Path | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("source")
        data["fase3_objects"] = list(self.fase3_objects)
        if self.fase2_backup is not None and self.fase2_backup.csv is not None:
            data["fase2_backup"]["csv"] = str(self.fase2_backup.csv)
        return {k: v for k, v in data.items() if v not in (None, [])}

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return path


def _need(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise ValueError(f"{where}{key} is missing")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"{where}{key} has the wrong type ({type(value).__name__})")
    return value


def _resolve(name: str, source: Path | None) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() or source is None else source.parent / path


def _parse(data: Any, source: Path | None) -> RunContext:
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    run_id = _need(data, "run_id", str, "")
    phase = _need(data, "phase", str, "")
    if phase not in _PHASES:
        raise ValueError(f"phase must be one of {', '.join(_PHASES)}, got {phase!r}")
    baseline = None
    if data.get("baseline") is not None:
        raw = _need(data, "baseline", dict, "")
        p95 = raw.get("p95_ms") or {}
        if not isinstance(p95, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in p95.values()
        ):
            raise ValueError("baseline.p95_ms must map endpoint paths to milliseconds")
        rate = raw.get("error_rate")
        if rate is not None and not isinstance(rate, int | float):
            raise ValueError("baseline.error_rate must be a number")
        baseline = Baseline(
            p95_ms={("/v1/" + k if not k.startswith("/") else k): float(v) for k, v in p95.items()},
            error_rate=None if rate is None else float(rate),
        )
    backup = None
    if data.get("fase2_backup") is not None:
        raw = _need(data, "fase2_backup", dict, "")
        counts = _need(raw, "key_counts_before", dict, "fase2_backup.")
        csv = raw.get("csv")
        backup = Fase2Backup(
            schema=_need(raw, "schema", str, "fase2_backup."),
            table=_need(raw, "table", str, "fase2_backup."),
            row_count=_need(raw, "row_count", int, "fase2_backup."),
            key_counts_before=KeyCounts(
                total=_need(counts, "total", int, "fase2_backup.key_counts_before."),
                active=_need(counts, "active", int, "fase2_backup.key_counts_before."),
            ),
            csv=_resolve(csv, source) if csv else None,
        )
    option = data.get("fase3_db_option")
    if option not in (None, 1, 2) or isinstance(option, bool):
        raise ValueError(f"fase3_db_option must be 1 or 2, got {option!r}")
    objects = data.get("fase3_objects") or []
    if not isinstance(objects, list) or not all(isinstance(o, str) for o in objects):
        raise ValueError("fase3_objects must be a list of object names")
    version = data.get("expected_version")
    if version is not None and not isinstance(version, str):
        raise ValueError("expected_version must be a string")
    return RunContext(
        run_id=run_id,
        phase=phase,
        expected_version=version or None,
        baseline=baseline,
        fase2_backup=backup,
        fase3_db_option=option,
        fase3_objects=tuple(objects),
        source=source,
    )


def load_run_context(path: Path) -> RunContext:
    """Read a run context file; ConfigError names the file and what is wrong with it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"run context {path}: no such file (written by the rollback driver)") from None
    except OSError as exc:
        raise ConfigError(f"run context {path}: cannot be read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"run context {path}: not valid JSON ({exc})") from None
    try:
        return _parse(data, path)
    except ValueError as exc:
        raise ConfigError(f"run context {path}: {exc}") from None


CONTEXT_NAME = "run-context.json"


@dataclass(frozen=True)
class FoundRun:
    """What `last_run` found: the context (None when no run qualifies) and a line saying so."""

    context: RunContext | None
    line: str


def last_run(settings: Settings, phase: str) -> FoundRun:
    """The run context of the newest run of `phase` against this target under [paths] logs_dir.

    A run counts when its journal names this target (`Settings.identity`; a journal from before
    runs recorded their target names none and never counts: comparing with another target's
    backup would fail healthy keys) and its folder holds a run context (written at its gate). Runs
    of other targets, and runs that stopped before their gate, are passed over and counted in
    the line.
    """
    from rollback.runs.journal import all_runs

    logs = settings.paths.logs_dir.expanduser().resolve()
    here = settings.identity
    other_target = no_context = 0
    for record in reversed(all_runs(logs)):
        if record.phase != phase:
            continue
        if record.target_id != here.id:  # strict: a journal naming no target is no one's here
            other_target += 1
            continue
        path = record.dir / CONTEXT_NAME
        if not path.is_file():
            no_context += 1
            continue
        return FoundRun(load_run_context(path), f"run context: {record.run_id}, the last {phase} "
                                                f"run against target {here.id} ({here.api}): {path}")
    skipped = [text for n, text in ((other_target, f"{other_target} of another target or of none"),
                                    (no_context, f"{no_context} stopped before their gate")) if n]
    over = f" (passed over: {', '.join(skipped)})" if skipped else ""
    return FoundRun(None, f"run context: none, no {phase} run against target {here.id} ({here.api}) "
                          f"under {logs}{over}; the checks that compare with a run are skipped "
                          "(pass --run-context PATH to name one)")
