"""`python -m bench.mutation`: the mutation score of the fast unit suites, per file, against its aims.

Runs `mutmut run` (configured in pyproject.toml `[tool.mutmut]`; it copies the project into
mutants/ and reuses the results of mutants whose code and tests did not change), then reads
mutmut's results from mutants/**/*.py.meta and prints, per mutated file, the mutants killed of
those checked, and the aims: at least 90% killed in checks/ and 85% overall. Exit status 0 when
both are met, 1 when not. Not part of CI (.ci/run): a full run takes 15-40 minutes on 2 shared
cores.

    python -m bench.mutation             run mutmut, then print the score
    python -m bench.mutation --fresh     the same from scratch: every mutant tested in this run
    python -m bench.mutation --no-run    print the score of the last run
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AIMS = {"checks/": 0.90, "": 0.85}  # prefix of the files -> share of their mutants killed
#: mutmut's exit codes of a mutant's test run (mutmut.stats.status_by_exit_code)
KILLED = {1, 3, 37}
SURVIVED = {0}
NO_TESTS = {5, 33}
TIMEOUT = {24, -24, 36, 152, 255}


def counts(meta: Path) -> Counter[str]:
    codes = json.loads(meta.read_text(encoding="utf-8")).get("exit_code_by_key", {})
    found: Counter[str] = Counter()
    for code in codes.values():
        found["total"] += 1
        if code is None:
            found["not checked"] += 1
        elif code in KILLED or code in TIMEOUT:  # a mutant that hangs the tests is caught too
            found["killed"] += 1
        elif code in SURVIVED:
            found["survived"] += 1
        elif code in NO_TESTS:
            found["no tests"] += 1
        else:
            found["other"] += 1
    return found


def score(root: Path = ROOT) -> tuple[list[str], bool]:
    """The table's lines and whether every aim is met."""
    per_file = {str(meta.relative_to(root / "mutants"))[: -len(".meta")]: counts(meta)
                for meta in sorted((root / "mutants").rglob("*.py.meta"))}
    if not per_file:
        return ["no mutmut results under mutants/: run `python -m bench.mutation`"], False
    lines = [f"{'file':<38} {'killed':>7} {'total':>6} {'score':>6}  survived  no tests  not checked"]

    def row(name: str, c: Counter[str]) -> str:
        share = c["killed"] / c["total"] if c["total"] else 0.0
        return (f"{name:<38} {c['killed']:>7} {c['total']:>6} {share:>6.1%}  {c['survived']:>8}  "
                f"{c['no tests']:>8}  {c['not checked']:>11}")

    for name, c in per_file.items():
        lines.append(row(name, c))
    met = True
    for prefix, aim in AIMS.items():
        group = sum((c for name, c in per_file.items() if name.startswith(prefix)), Counter())
        share = group["killed"] / group["total"] if group["total"] else 0.0
        ok = share >= aim and not group["not checked"]
        met = met and ok
        label = f"{prefix or 'all'} (aim {aim:.0%})"
        lines.append(row(label, group) + ("  met" if ok else "  NOT MET"))
    return lines, met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mutation", description=__doc__.split("\n")[0])
    parser.add_argument("--no-run", action="store_true", help="print the score of the last run only")
    parser.add_argument("--fresh", action="store_true",
                        help="delete mutmut's results (mutants/) first, so that one run measures every file")
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested at once (default 2)")
    args = parser.parse_args(argv)
    if args.fresh and args.no_run:
        parser.error("--fresh and --no-run contradict each other: --fresh deletes what --no-run prints")
    if args.fresh:
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    if not args.no_run:
        mutmut = Path(sys.executable).with_name("mutmut")
        subprocess.run([str(mutmut), "run", "--max-children", str(args.max_children)], cwd=ROOT,
                       check=False)
    lines, met = score()
    print("\n".join(lines))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
