"""The platform's build: compile every Python module; exit 1 on the first syntax error.

Usage: python build.py
Compiles in memory only (nothing is written into the repository), so it is safe to run in a
checkout that is being served. Where the route module lists the extensions
(app/api/v1/leads/route.py, the tistis shape) it also imports the routes in a child process
without bytecode, the way a type check would catch an import left dangling by a partial revert.
Migrations are read from supabase/migrations/ when that folder exists, else from migrations/.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SOURCE_DIRS = ("app", "src", "__tests__")
ROUTE_MODULES = ("app.api.health.route", "app.api.v1.leads.route", "src.shared.lib.api_key_auth")
REGISTERED = re.compile(r"^EXTENSIONS\.append\((\w+)\)", re.MULTILINE)


def _sources() -> list[Path]:
    found = [p for d in SOURCE_DIRS for p in sorted((ROOT / d).glob("**/*.py"))]
    return [*found, Path(__file__).resolve()]


def _migrations() -> list[str]:
    folder = ROOT / "supabase" / "migrations"
    if not folder.is_dir():
        folder = ROOT / "migrations"
    return sorted(p.name for p in folder.glob("*.sql"))


def _route_module() -> Path:
    return ROOT / "app" / "api" / "v1" / "leads" / "route.py"


def _extensions() -> list[str]:
    if _route_module().is_file():
        return REGISTERED.findall(_route_module().read_text(encoding="utf-8"))
    return sorted(p.stem for p in (ROOT / "app" / "ext").glob("[!_]*.py"))


def _import_routes() -> str | None:
    """None when the routes import; else the error's last line."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(ROOT)}
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    done = subprocess.run(
        [sys.executable, "-B", "-c", code, *ROUTE_MODULES],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    if done.returncode == 0:
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {done.returncode}"


def main() -> int:
    sources = _sources()
    failures = 0
    for path in sources:
        try:
            compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as exc:
            failures += 1
            print(f"build: {path.relative_to(ROOT)}: {exc}", file=sys.stderr)
    if failures:
        print(f"build failed: {failures} of {len(sources)} modules do not compile", file=sys.stderr)
        return 1
    if _route_module().is_file():
        problem = _import_routes()
        if problem:
            print(f"build failed: the routes do not import: {problem}", file=sys.stderr)
            return 1
    print(f"build ok: {len(sources)} modules compiled")
    print(f"extensions: {', '.join(_extensions()) or 'none'}")
    print(f"migrations: {', '.join(_migrations()) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
