"""`deploy_mode = "vercel"`: production through the Vercel CLI (`[target] vercel_command`).

- When production serves the newest production deployment (the bad one is the latest) and an
  earlier READY one was built from exactly the tree the revert produces, production goes back to
  it with `vercel rollback <url>`: no build, seconds instead of minutes. That is the case of a
  phase that was the last commit, reverted whole.
- Otherwise `vercel --prod --yes` deploys the rollback branch's checkout.

Either way the proof is the deployment's git commit, from `vercel inspect <production host>`
(the profile's pattern, `githubCommitSha`), never a version field of the health answer: the real
platform hard-codes that one.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import urlsplit

from rollback.deploy import Adapter, Started
from rollback.errors import StepFailed
from rollback.runs import gitops
from rollback.runs.core import Run

#: how far back an earlier deployment with the revert's tree is looked for
LOOK_BACK = 10
_URL = re.compile(r"https?://\S+|\b[\w.-]+\.vercel\.app\b")
_SHA = r"githubCommitSha\"?:?\s+\"?([0-9a-f]{7,40})"


@dataclass(frozen=True)
class Earlier:
    url: str
    commit: str


class Vercel(Adapter):
    mode: ClassVar[str] = "vercel"

    def _call(self, run: Run, *args: str, timeout_s: float | None = None) -> str:
        argv = [*shlex.split(run.settings.target.vercel_command), *args]
        try:
            done = subprocess.run(argv, cwd=run.repo, capture_output=True, text=True, errors="replace",
                                  timeout=timeout_s or run.settings.platform.version.timeout_s,
                                  stdin=subprocess.DEVNULL, pass_fds=run.lock_fds)
        except FileNotFoundError:
            raise StepFailed(f"`{argv[0]}` not found: install the Vercel CLI (npm i -g vercel) or "
                             "set [target] vercel_command") from None
        except subprocess.TimeoutExpired:
            raise StepFailed(f"`{' '.join(argv[:3])}` did not answer within its timeout") from None
        if done.returncode != 0:
            tail = " | ".join(line for line in done.stderr.splitlines()[-3:] if line.strip())
            raise StepFailed(f"`vercel {' '.join(args[:2])}` exited with {done.returncode}: "
                             f"{run.redact(tail) or 'no output'}")
        return done.stdout

    def commit_of(self, run: Run, deployment: str) -> str | None:
        """The git commit a deployment (an id, a url, or the production host) was built from."""
        text = self._call(run, "inspect", deployment)
        pattern = run.settings.platform.version.pattern or _SHA
        found = re.search(pattern, text)
        return found.group(1) if found else None

    def serving(self, run: Run) -> str | None:
        """The commit of the deployment production serves."""
        return self.commit_of(run, urlsplit(run.settings.target.api_base_url).netloc)

    def production(self, run: Run) -> list[str]:
        """READY production deployments, newest first (their urls)."""
        urls = []
        for line in self._call(run, "ls", "--prod").splitlines():
            found = _URL.search(line)
            if found and re.search(r"\bready\b", line, re.IGNORECASE):
                urls.append(found.group(0))
        return urls

    def earlier(self, run: Run, head: str) -> Earlier | None:
        """An earlier production deployment to go back to without a build: only when production
        serves the newest deployment, and that one was built from exactly the revert's tree."""
        tree = gitops.out(run.repo, "rev-parse", f"{head}^{{tree}}").strip()
        urls = self.production(run)
        if len(urls) < 2:
            return None
        serving = self.serving(run)
        if not serving or self.commit_of(run, urls[0]) != serving:
            return None  # production is not on the latest deployment: deploy, do not guess
        for url in urls[1:LOOK_BACK + 1]:
            commit = self.commit_of(run, url)
            if commit is None:
                continue
            theirs = gitops.git(run.repo, "rev-parse", f"{commit}^{{tree}}", check=False)
            if theirs.returncode == 0 and theirs.stdout.strip() == tree:
                return Earlier(url, gitops.resolve(run.repo, commit))
        return None

    def describe(self, run: Run, head: str) -> list[str]:
        try:
            found = self.earlier(run, head)
        except StepFailed as exc:
            return [f"`vercel --prod --yes` from {run.repo} (could not list deployments: {exc})"]
        if found is not None:
            return [f"production is on the latest deployment and {found.url} was built from "
                    f"{found.commit[:12]}, exactly the reverted tree: instant rollback with "
                    f"`vercel rollback {found.url}` (no build)"]
        return [f"`vercel --prod --yes` from {run.repo}: no earlier deployment has the reverted tree"]

    def start(self, run: Run, head: str) -> Started:
        found = self.earlier(run, head)
        if found is not None:
            self._call(run, "rollback", found.url, timeout_s=run.settings.target.deploy_timeout_s)
            run.say(f"instant rollback to {found.url} (built from {found.commit[:12]})")
            return Started(found.commit, f"instant rollback to {found.url}",
                           {"vercel": {"how": "rollback", "url": found.url, "commit": found.commit}})
        out = self._call(run, "--prod", "--yes", timeout_s=run.settings.target.deploy_timeout_s)
        url = next((m.group(0) for m in map(_URL.search, out.splitlines()) if m), None)
        run.say(f"deployed {head[:12]} with vercel --prod" + (f": {url}" if url else ""))
        return Started(head, "vercel --prod", {"vercel": {"how": "deploy", "url": url}})
