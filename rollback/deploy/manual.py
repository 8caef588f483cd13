"""`deploy_mode = "manual"`: an operator deploys the rollback branch; the run waits for it."""

from __future__ import annotations

from typing import ClassVar

from rollback.deploy import Adapter, Started
from rollback.runs.core import Run


class Manual(Adapter):
    mode: ClassVar[str] = "manual"

    def describe(self, run: Run, head: str) -> list[str]:
        return ["ask an operator to deploy the rollback branch and confirm"]

    def start(self, run: Run, head: str) -> Started:
        target = run.settings.target
        run.say(f"deploy commit {head[:12]} (branch {run.rollback_branch}) now; waiting up to "
                f"{target.deploy_timeout_s:g} s for production to serve it", "bold")
        if run.ui.interactive:
            run.ui.ask("press Enter once the deployment is started")
        return Started(head, "by an operator")
