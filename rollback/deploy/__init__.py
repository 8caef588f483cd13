"""How a rollback reaches production: one adapter per `[target] deploy_mode`.

    command   run `[target] deploy_command` in the checkout              command.py
    git       merge the rollback branch into `[target] branch` and push   git.py
              it: what a git-integrated Vercel project deploys from
    vercel    `vercel --prod`, or an instant rollback to an earlier        vercel.py
              deployment built from exactly the reverted tree
    manual    an operator deploys and confirms                             manual.py

An adapter starts the deployment and says which commit production must then serve; the Deploy
step waits for it through the profile's version source (on the real platform `vercel inspect`'s
git commit: its health answer's version is hard-coded). Whatever the adapter, the deploy branch
ends up carrying the revert (the Publish step, or the git adapter's push), unless the operator passed
`--keep-deploy-branch`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from rollback.runs.core import Run


@dataclass
class Started:
    """A deployment under way: the commit production must serve once it is live."""

    expected: str
    how: str
    facts: dict[str, Any] = field(default_factory=dict)


class Adapter:
    mode: ClassVar[str] = ""
    #: the deploy itself puts the revert on the deploy branch (no Publish step needed)
    publishes: ClassVar[bool] = False
    #: a failed deploy leaves production on the original code (so the revert can be taken back)
    leaves_original_on_failure: ClassVar[bool] = True

    def check(self, run: Run) -> list[str]:
        """Configuration errors raise ConfigError; returns lines for the plan."""
        return []

    def describe(self, run: Run, head: str) -> list[str]:
        raise NotImplementedError

    def start(self, run: Run, head: str) -> Started:
        raise NotImplementedError


def adapter_for(mode: str) -> Adapter:
    from rollback.deploy.command import Command
    from rollback.deploy.git import Git
    from rollback.deploy.manual import Manual
    from rollback.deploy.vercel import Vercel

    adapters: dict[str, type[Adapter]] = {a.mode: a for a in (Command, Git, Manual, Vercel)}
    return adapters[mode]()
