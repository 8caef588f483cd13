"""A stand-in for the `vercel` command, for the tistis sandbox: deployments and production.

Run as `python -m sandbox.vercel --sandbox-dir DIR ...`; `rollback sandbox up --shape tistis`
writes `DIR/bin/vercel`, which does exactly that, and `rollback sandbox env` puts it on PATH.

    vercel [--prod] [--yes] [--cwd DIR]   deploy the checkout's HEAD: a snapshot (git archive)
                                          under DIR/vercel/deployments/<id>/, its build
                                          (`python build.py`), and with --prod production
                                          switched to it; prints the deployment's url
    vercel ls [--prod]                    deployments, newest first
    vercel inspect <id|url> [--json]      a deployment's fields, githubCommitSha among them
    vercel rollback [<id|url>]            production back to the previous READY production
                                          deployment (or the one given), without a build
    vercel promote <id|url>               production switched to that deployment

Production is the sandbox API: switching it restarts the same uvicorn server from the chosen
snapshot, so `API_BASE_URL` always answers with production. The API's own address
(`127.0.0.1:PORT`, with or without `http://`) is an alias of production for `inspect`, as a
production domain is on Vercel. A failed build leaves production as it was (state ERROR, exit 1).

State: DIR/vercel/state.json, {"project", "production": id, "deployments": [...]}; each
deployment records id, url, commit (full sha), created, state (READY | ERROR), target
(production | preview), the commit's subject and its branch. Commands that change it hold a
lock on DIR/vercel/.lock.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import json
import secrets
import string
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from rollback.errors import StepFailed, UsageError
from sandbox import control, repo

PROJECT = "tistis-platform"
SCOPE = "sandbox"
BUILD_TIMEOUT_S = 300
_ALPHABET = string.ascii_lowercase + string.digits

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class Deployment:
    id: str
    url: str
    commit: str
    created: str  # ISO 8601, UTC
    state: str  # READY | ERROR
    target: str  # production | preview
    message: str = ""
    ref: str = ""

    @property
    def created_at(self) -> datetime:
        return datetime.fromisoformat(self.created)

    def age(self, now: datetime | None = None) -> str:
        seconds = max(0, int(((now or datetime.now(UTC)) - self.created_at).total_seconds()))
        for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
            if seconds >= size:
                return f"{seconds // size}{unit}"
        return f"{seconds}s"


@dataclass
class _Store:
    path: Path
    production: str | None
    deployments: list[Deployment]

    @classmethod
    def load(cls, root: Path) -> _Store:
        path = root / "vercel" / "state.json"
        if not path.is_file():
            return cls(path, None, [])
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(path, raw.get("production"), [Deployment(**d) for d in raw.get("deployments", [])])
        except (ValueError, TypeError) as exc:
            raise StepFailed(f"{path} is corrupt ({exc}): rebuild with "
                             "`rollback sandbox up --reset`") from None

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {"project": PROJECT, "production": self.production,
                "deployments": [asdict(d) for d in self.deployments]}
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        temporary.replace(self.path)

    def newest_first(self) -> list[Deployment]:
        return sorted(self.deployments, key=lambda d: d.created, reverse=True)

    def get(self, deployment_id: str | None) -> Deployment | None:
        return next((d for d in self.deployments if d.id == deployment_id), None)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    folder = root / "vercel"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def snapshot_dir(root: Path, deployment_id: str) -> Path:
    return root / "vercel" / "deployments" / deployment_id


def build_log(root: Path, deployment_id: str) -> Path:
    return root / "vercel" / "logs" / f"{deployment_id}.log"


def write_command(state: control.State) -> Path:
    """DIR/bin/vercel: this module with this interpreter, bound to the sandbox's folder."""
    state.bin_dir.mkdir(parents=True, exist_ok=True)
    command = state.vercel_command
    command.write_text(
        "#!/bin/sh\n"
        "# The sandbox's stand-in for the Vercel CLI (written by `rollback sandbox up --shape tistis`).\n"
        f"exec {_sh(sys.executable)} -m sandbox.vercel --sandbox-dir {_sh(state.dir)} \"$@\"\n"
    )
    command.chmod(0o755)
    return command


def _sh(text: str) -> str:
    import shlex

    return shlex.quote(text)


def production(root: Path) -> Deployment | None:
    store = _Store.load(root.resolve())
    return store.get(store.production)


def deployments(root: Path) -> list[Deployment]:
    return _Store.load(root.resolve()).newest_first()


# --- deploy ----------------------------------------------------------------------------------


def deploy(root: Path, cwd: Path, *, prod: bool = True, log: Log = _stderr) -> Deployment:
    """Snapshot `cwd`'s HEAD, build it, and (prod) make it production. A failed build or start
    raises StepFailed after recording the deployment as ERROR; production stays as it was."""
    root = root.resolve()
    state = control.require(root)
    commit = _head(cwd)
    if prod:
        _require_database(state)
    with _locked(root):
        store = _Store.load(root)
        deployment = Deployment(
            id="dpl_" + _random(string.ascii_letters + string.digits, 24),
            url=f"https://{PROJECT}-{_random(_ALPHABET, 9)}-{SCOPE}.vercel.app",
            commit=commit,
            created=datetime.now(UTC).isoformat(timespec="milliseconds"),
            state="BUILDING",
            target="production" if prod else "preview",
            message=repo.git(cwd, "show", "-s", "--format=%s", commit),
            ref=_branch(cwd),
        )
        log(f"Deploying {PROJECT} ({commit[:12]}) as {deployment.id}")
        folder = snapshot_dir(root, deployment.id)
        _archive(cwd, commit, folder)
        try:
            _build(folder, build_log(root, deployment.id))
        except StepFailed:
            deployment.state = "ERROR"
            store.deployments.append(deployment)
            store.save()
            raise
        deployment.state = "READY"
        store.deployments.append(deployment)
        store.save()
        if prod:
            try:
                _serve(state, store, deployment)
            except StepFailed:
                deployment.state = "ERROR"
                store.save()
                raise
        log(("Production: " if prod else "Preview: ") + deployment.url)
    return deployment


def _random(alphabet: str, size: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(size))


def _head(cwd: Path) -> str:
    try:
        return repo.git(cwd, "rev-parse", "--verify", "HEAD^{commit}")
    except StepFailed:
        raise UsageError(f"{cwd} is not a git checkout with a commit: run vercel from the platform's "
                         "repository") from None


def _branch(cwd: Path) -> str:
    try:
        return repo.git(cwd, "symbolic-ref", "--short", "-q", "HEAD")
    except StepFailed:
        return ""  # detached


def _archive(cwd: Path, commit: str, folder: Path) -> None:
    done = subprocess.run(["git", "-C", str(cwd), "archive", "--format=tar", commit],
                          capture_output=True, check=False)
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        raise StepFailed(f"git archive {commit[:12]} failed: {detail[-1] if detail else done.returncode}")
    folder.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        archive.extractall(folder, filter="data")


def _build(folder: Path, log_file: Path) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("wb") as out:
        try:
            done = subprocess.run([sys.executable, "build.py"], cwd=folder, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S, check=False,
                                  env={**_clean_env(), "PYTHONDONTWRITEBYTECODE": "1"})
        except subprocess.TimeoutExpired:
            raise StepFailed(f"build timed out after {BUILD_TIMEOUT_S} s: see {log_file}") from None
    if done.returncode != 0:
        lines = log_file.read_text(errors="replace").strip().splitlines()
        raise StepFailed(f"build failed (exit {done.returncode}): "
                         f"{lines[-1] if lines else 'no output'} (log: {log_file})")


def _clean_env() -> dict[str, str]:
    import os

    secret = ("DATABASE_URL", "TEST_API_KEY", "TEST_BRANCH_API_KEY", "TEST_REVOKED_API_KEY",
              "TEST_EXPIRED_API_KEY", "PLATFORM_DATABASE_URL")
    return {k: v for k, v in os.environ.items() if k not in secret}


def _require_database(state: control.State) -> None:
    """Production needs the sandbox's database: without it the API never turns healthy.

    Asked over TCP, as the API will: `pg_ctl status` needs to read the data folder, which its
    system user may not reach (a parent folder's mode changed since `up`) while the server
    itself runs fine."""
    try:
        with psycopg.connect(state.database_url, connect_timeout=5):
            return
    except psycopg.Error:
        pass
    raise StepFailed(f"the sandbox in {state.root} is down (its database does not answer): run "
                     f"`rollback sandbox up --dir {state.root}` first")


def _serve(state: control.State, store: _Store, deployment: Deployment) -> None:
    """Make `deployment` production: the API restarted from its snapshot. If it does not come
    up, the previous production is started again and StepFailed raised."""
    previous = store.get(store.production)
    control.stop_api(state)
    state.app_dir = str(snapshot_dir(state.root, deployment.id))
    state.save()
    try:
        control.start_api(state)
    except StepFailed as failure:
        control.stop_api(state)
        if previous is not None:
            state.app_dir = str(snapshot_dir(state.root, previous.id))
            state.save()
            with contextlib.suppress(StepFailed):
                control.start_api(state)
        raise StepFailed(f"deployment {deployment.id} did not start ({failure}); "
                         f"production is still {previous.id if previous else 'none'}") from None
    store.production = deployment.id
    store.save()


# --- rollback, promote -----------------------------------------------------------------------


def find(root: Path, reference: str) -> Deployment:
    """A deployment by id, url (with or without https://), or the API's own address (an alias
    of production)."""
    root = root.resolve()
    store = _Store.load(root)
    wanted = reference.strip().rstrip("/")
    bare = wanted.removeprefix("https://").removeprefix("http://")
    for d in store.deployments:
        if wanted in (d.id, d.url) or bare == d.url.removeprefix("https://"):
            return d
    state = control.State.load(root)
    if state is not None and bare in (f"127.0.0.1:{state.api_port}", f"localhost:{state.api_port}"):
        current = store.get(store.production)
        if current is not None:
            return current
        raise UsageError(f"{reference} has no production deployment yet")
    raise UsageError(f"no deployment {reference!r} in {PROJECT}: see `vercel ls`")


def rollback(root: Path, reference: str | None = None, *, log: Log = _stderr) -> Deployment:
    """Production back to `reference`, or to the production deployment before the current one."""
    root = root.resolve()
    state = control.require(root)
    with _locked(root):
        store = _Store.load(root)
        current = store.get(store.production)
        if reference is not None:
            target = find(root, reference)
        else:
            earlier = [d for d in store.newest_first() if d.target == "production" and d.state == "READY"
                       and current is not None and d.created < current.created]
            if not earlier:
                raise UsageError("no earlier READY production deployment to roll back to")
            target = earlier[0]
        _switch(state, store, target, log)
        log(f"Success! {PROJECT} was rolled back to {target.url} ({target.id})")
    return target


def promote(root: Path, reference: str, *, log: Log = _stderr) -> Deployment:
    root = root.resolve()
    state = control.require(root)
    with _locked(root):
        store = _Store.load(root)
        target = find(root, reference)
        _switch(state, store, target, log)
        log(f"Success! {target.url} ({target.id}) is now the production deployment of {PROJECT}")
    return target


def _switch(state: control.State, store: _Store, target: Deployment, log: Log) -> None:
    if target.state != "READY":
        raise UsageError(f"deployment {target.id} is {target.state}, not READY: it cannot serve production")
    if not snapshot_dir(state.root, target.id).is_dir():
        raise StepFailed(f"deployment {target.id} has no files left in {snapshot_dir(state.root, target.id)}")
    if store.production == target.id and control.is_running(state):
        log(f"{target.id} is already the production deployment")
        return
    _require_database(state)
    _serve(state, store, target)


# --- the command line -----------------------------------------------------------------------


def _print_ls(items: Sequence[Deployment], current: str | None) -> None:
    _stderr(f"> Deployments for {PROJECT} [{SCOPE}]")
    _stderr(f"  {'Age':<6} {'Deployment':<56} {'Status':<7} {'Environment':<11} {'Commit':<40} Id")
    now = datetime.now(UTC)
    for d in items:
        mark = "  current" if d.id == current else ""
        print(f"  {d.age(now):<6} {d.url:<56} {d.state:<7} {d.target.capitalize():<11} "
              f"{d.commit} {d.id}{mark}")


def _inspect_fields(d: Deployment, current: str | None, alias: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "id": d.id,
        "name": PROJECT,
        "url": d.url,
        "target": d.target,
        "readyState": d.state,
        "createdAt": d.created,
        "current": d.id == current,
        "aliases": [alias] if alias and d.id == current else [],
        "meta": {"githubCommitSha": d.commit, "githubCommitRef": d.ref, "githubCommitMessage": d.message},
    }
    return fields


def _print_inspect(d: Deployment, current: str | None, alias: str | None) -> None:
    print("  General")
    print()
    print(f"    id {d.id}")
    print(f"    name {PROJECT}")
    print(f"    target {d.target}")
    print(f"    status {d.state}")
    print(f"    url {d.url}")
    print(f"    created {d.created} ({d.age()} ago)")
    print(f"    current {'yes' if d.id == current else 'no'}")
    if alias and d.id == current:
        print(f"    alias {alias}")
    print()
    print("  Git")
    print()
    print(f"    githubCommitSha {d.commit}")
    print(f"    githubCommitRef {d.ref or '-'}")
    print(f"    githubCommitMessage {d.message}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 1, like every other refusal here
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vercel", description="The tistis sandbox's stand-in for the Vercel CLI.")
    parser.add_argument("--sandbox-dir", type=Path, required=True, help=argparse.SUPPRESS)
    parser.add_argument("--version", action="store_true", help="print the version")
    parser.add_argument("--cwd", type=Path, help="the checkout to deploy (default: the current folder)")
    parser.add_argument("--yes", "-y", action="store_true", help="accepted; never asks anyway")
    parser.add_argument("--prod", action="store_true", help="deploy to production")
    parser.add_argument("--json", action="store_true", help="inspect: print JSON")
    parser.add_argument("words", nargs="*", help="deploy | ls | inspect ID | rollback [ID] | promote ID")
    return parser


def run(argv: Sequence[str]) -> int:
    args = _parser().parse_intermixed_args(list(argv))
    if args.version:
        print("Vercel CLI (sandbox stand-in)")
        return 0
    root = args.sandbox_dir.resolve()
    command, *rest = args.words or ["deploy"]
    if command == "deploy":
        if rest:
            raise UsageError(f"vercel deploy takes no path argument here (got {rest[0]!r}): use --cwd")
        print(deploy(root, (args.cwd or Path.cwd()).resolve(), prod=args.prod).url)
        return 0
    if command in ("ls", "list"):
        if rest:
            raise UsageError(f"vercel ls takes no argument (got {rest[0]!r})")
        store = _Store.load(root)
        shown = [d for d in store.newest_first() if d.target == "production" or not args.prod]
        _print_ls(shown, store.production)
        return 0
    if command == "inspect":
        if len(rest) != 1:
            raise UsageError("vercel inspect needs one deployment id or url")
        target = find(root, rest[0])
        store = _Store.load(root)
        state = control.State.load(root)
        alias = f"127.0.0.1:{state.api_port}" if state else None
        if args.json:
            print(json.dumps(_inspect_fields(target, store.production, alias), indent=2))
        else:
            _print_inspect(target, store.production, alias)
        return 0
    if command == "rollback":
        if len(rest) > 1:
            raise UsageError("vercel rollback takes at most one deployment id or url")
        rollback(root, rest[0] if rest else None)
        return 0
    if command == "promote":
        if len(rest) != 1:
            raise UsageError("vercel promote needs one deployment id or url")
        promote(root, rest[0])
        return 0
    raise UsageError(f"unknown command {command!r}: deploy, ls, inspect, rollback or promote")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except (UsageError, StepFailed) as exc:
        _stderr(f"Error: {exc}")
        return 1
    except KeyboardInterrupt:
        _stderr("Error: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
