"""The platform's build: compile every Python module; exit 1 on the first syntax error.

Usage: python build.py
Compiles in memory only (nothing is written into the repository), so it is safe to run in a
checkout that is being served.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def main() -> int:
    sources = [*sorted(ROOT.glob("app/**/*.py")), Path(__file__).resolve()]
    failures = 0
    for path in sources:
        try:
            compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as exc:
            failures += 1
            print(f"build: {path.relative_to(ROOT)}: {exc}", file=sys.stderr)
    migrations = sorted(p.name for p in (ROOT / "migrations").glob("*.sql"))
    if failures:
        print(f"build failed: {failures} of {len(sources)} modules do not compile", file=sys.stderr)
        return 1
    extensions = sorted(p.stem for p in (ROOT / "app" / "ext").glob("[!_]*.py"))
    print(f"build ok: {len(sources)} modules compiled")
    print(f"extensions: {', '.join(extensions) or 'none'}")
    print(f"migrations: {', '.join(migrations) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
