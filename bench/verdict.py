"""Time to verdict: `rollback validate fase2` (the real command, a subprocess) against a sandbox,
next to bench/floor_fase2.py making the same requests and queries with no framework; and how
both grow with the number of list endpoints in the profile and of tenants in the database.

The sandbox is the state right after the database step of a FASE 2 rollback: its branch keys
were converted by the driver's own Backup and ConvertKeys steps, so a healthy verdict is the
expected answer (both print it). Every run gets a tenant-wide key of its own (see bench/keys.py),
so that no run is slowed or failed by the rate limit the previous runs spent. One warm-up of
each comes first and is not counted; then validate and floor alternate, so that both see the
same machine. Wall time and CPU time (the child's, from getrusage) are both taken.

Scaling, each point a ratio against its own floor measured alternately in the same run:

    endpoints   the same sandbox with its profile narrowed to its first 1 and 2 list
                endpoints (a rollback.toml of the bench's own, `[[platform.resources]]`), next
                to the full profile (3, the headline figure); the floor is given the same list
    tenants     a second sandbox seeded with SCALE_TENANTS tenants (the first has the default
                50), converted the same way

A point runs min(--runs, 3) pairs after its warm-up.
"""

from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import BenchError, Log, rollback_command, tail
from bench.driver import convert_in_subprocess
from bench.keys import mint_tenant_keys
from bench.sandboxes import Sandbox
from bench.stats import median, ratio, rounded
from rollback.config import load_settings

FLOOR_SCRIPT = Path(__file__).resolve().parent / "floor_fase2.py"
RUN_TIMEOUT_S = 180
#: tenants of the second sandbox, for the tenant scaling point
SCALE_TENANTS = 500
#: the aims of the issue: within 1.5x the floor's wall time, and under 2 s
AIM_RATIO, AIM_S = 1.5, 2.0


@dataclass
class Timed:
    seconds: float
    cpu_s: float
    exit_code: int
    summary: str


@dataclass
class Pairs:
    """Alternating runs of validate and the floor on one sandbox and profile."""

    endpoints: int
    tenants: int
    validate: list[Timed] = field(default_factory=list)
    floor: list[Timed] = field(default_factory=list)
    warmup: dict[str, float] = field(default_factory=dict)

    def figures(self) -> dict[str, Any]:
        v, f = median([t.seconds for t in self.validate]), median([t.seconds for t in self.floor])
        vc, fc = median([t.cpu_s for t in self.validate]), median([t.cpu_s for t in self.floor])
        return {
            "endpoints": self.endpoints,
            "tenants": self.tenants,
            "runs": len(self.validate),
            "validate_median_s": rounded(v),
            "floor_median_s": rounded(f),
            "ratio": rounded(ratio(v, f), 2),
            "validate_cpu_median_s": rounded(vc),
            "floor_cpu_median_s": rounded(fc),
            "cpu_ratio": rounded(ratio(vc, fc), 2),
            "validate_runs_s": [rounded(t.seconds) for t in self.validate],
            "floor_runs_s": [rounded(t.seconds) for t in self.floor],
            "validate_exit_codes": [t.exit_code for t in self.validate],
            "floor_exit_codes": [t.exit_code for t in self.floor],
            "validate_verdict": self.validate[-1].summary if self.validate else None,
            "floor_verdict": self.floor[-1].summary if self.floor else None,
            "warmup_s": {k: rounded(s) for k, s in self.warmup.items()},
        }


@dataclass
class VerdictResult:
    runs: int
    main: Pairs
    scaling: list[Pairs] = field(default_factory=list)
    keys_converted_first: int = 0
    notes: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        main = self.main.figures()
        met = None if main["ratio"] is None else (main["ratio"] <= AIM_RATIO
                                                  and main["validate_median_s"] < AIM_S)
        return {
            **{k: v for k, v in main.items() if k not in ("endpoints", "tenants")},
            "runs": self.runs,
            "endpoints": self.main.endpoints,
            "tenants": self.main.tenants,
            "aim": f"validate within {AIM_RATIO}x the floor's wall time and under {AIM_S:g} s",
            "aim_met": met,
            "scaling": [p.figures() for p in sorted([self.main, *self.scaling],
                                                    key=lambda p: (p.tenants, p.endpoints))],
            "branch_keys_converted_before": self.keys_converted_first,
            "command": "rollback validate fase2",
            "floor_command": f"python {FLOOR_SCRIPT.relative_to(FLOOR_SCRIPT.parent.parent)}",
            "notes": self.notes,
        }


def _timed(command: list[str], env: dict[str, str], cwd: Path) -> Timed:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                                timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BenchError(f"`{' '.join(command[-2:])}` took over {RUN_TIMEOUT_S} s") from None
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode not in (0, 1):
        raise BenchError(f"`{' '.join(command)}` exited {result.returncode}: "
                         f"{tail(result.stderr or result.stdout)}")
    lines = [line for line in result.stdout.strip().splitlines() if line.startswith("fase2")]
    summary = lines[-1] if lines else tail(result.stdout, 1)
    return Timed(elapsed, cpu, result.returncode, summary.split("; report ")[0])


def _narrowed_config(sbx: Sandbox, count: int, folder: Path) -> tuple[Path, list[str]]:
    """A rollback.toml: the sandbox's own, its profile narrowed to the first `count` list
    endpoints. Returns it and those endpoints' paths (for the floor)."""
    source = sbx.root / "rollback.toml"
    profile = load_settings(env={"ROLLBACK_CONFIG": str(source)}).platform
    chosen = profile.resources[:count]
    lines = [source.read_text(encoding="utf-8").rstrip(), ""]
    for r in chosen:
        lines += ["[[platform.resources]]", f"name = {json.dumps(r.name)}",
                  f"table = {json.dumps(r.table)}", f"fields = {json.dumps(list(r.fields))}",
                  f"branch_filter = {json.dumps(r.branch_filter)}"]
        if r.count_where is not None:
            lines.append(f"count_where = {json.dumps(r.count_where)}")
        lines.append("")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "rollback.toml"
    config.write_text("\n".join(lines), encoding="utf-8")
    return config, [profile.path_of(r) for r in chosen]


def _alternate(sbx: Sandbox, work: Path, pairs: int, *, endpoints: int, log: Log,
               label: str, config: Path | None = None, paths: list[str] | None = None,
               seed: int = 7) -> Pairs:
    """One warm-up, then `pairs` runs of validate then floor, each pair with a key of its own."""
    work.mkdir(parents=True, exist_ok=True)
    result = Pairs(endpoints=endpoints, tenants=sbx.state.tenants)
    keys = mint_tenant_keys(sbx.database_url, sbx.state.tenant_id, pairs + 1, random.Random(seed))
    validate = [*rollback_command(), "validate", "fase2", "--reports", str(work / "reports")]
    floor = [sys.executable, str(FLOOR_SCRIPT), *(paths or [])]
    for i, key in enumerate(keys):
        extra = {"TEST_API_KEY": key, **({"ROLLBACK_CONFIG": str(config)} if config else {})}
        env = sbx.env(**extra)
        # as a user's Python runs it: byte code cached after the first run (the warm-up), both
        # the toolkit's modules and pytest's rewritten checks; with PYTHONDONTWRITEBYTECODE=1
        # (which the other sections keep, and some container images set) every run compiles
        # them again, about 0.3-0.4 s of CPU more; the floor, one script, barely notices
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        v = _timed(validate, env, work)
        f = _timed(floor, env, work)
        if i == 0:
            result.warmup = {"validate": v.seconds, "floor": f.seconds}
            log(f"  {label} warm-up: validate {v.seconds:.2f} s, floor {f.seconds:.2f} s")
            continue
        result.validate.append(v)
        result.floor.append(f)
        log(f"  {label} run {i}/{pairs}: validate {v.seconds:.2f} s ({v.cpu_s:.2f} s CPU, exit "
            f"{v.exit_code}), floor {f.seconds:.2f} s ({f.cpu_s:.2f} s CPU, exit {f.exit_code})")
    return result


def measure(sbx: Sandbox, work: Path, runs: int, log: Log,
            tenant_sandbox: Callable[[int], Any] | None = None) -> VerdictResult:
    """`tenant_sandbox(n)`: a context manager giving a running sandbox of n tenants (the tenant
    scaling point); None leaves that point out."""
    work.mkdir(parents=True, exist_ok=True)
    timing = convert_in_subprocess(sbx.env(), work, "bench-verdict")
    endpoints = len(load_settings(env={"ROLLBACK_CONFIG": str(sbx.root / "rollback.toml")})
                    .platform.resources)
    main = _alternate(sbx, work / "main", runs, endpoints=endpoints, log=log,
                      label=f"{endpoints} endpoints, {sbx.state.tenants} tenants:")
    result = VerdictResult(runs=runs, main=main, keys_converted_first=timing.rows)
    points = max(1, min(runs, 3))
    for count in range(1, endpoints):
        config, paths = _narrowed_config(sbx, count, work / f"endpoints-{count}")
        result.scaling.append(_alternate(sbx, work / f"endpoints-{count}", points, endpoints=count,
                                         log=log, label=f"{count} endpoint(s):", config=config,
                                         paths=paths, seed=100 + count))
    if tenant_sandbox is not None:
        with tenant_sandbox(SCALE_TENANTS) as big:
            log(f"  rollback sandbox up --tenants {SCALE_TENANTS}: {big.up_s:.1f} s")
            convert_in_subprocess(big.env(), work, "bench-verdict-tenants")
            result.scaling.append(_alternate(big, work / f"tenants-{SCALE_TENANTS}", points,
                                             endpoints=endpoints, log=log,
                                             label=f"{SCALE_TENANTS} tenants:", seed=200))
    return result
