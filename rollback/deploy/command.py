"""`deploy_mode = "command"`: run `[target] deploy_command` in the checkout of the rollback branch."""

from __future__ import annotations

from typing import ClassVar

from rollback.deploy import Adapter, Started
from rollback.errors import ConfigError, StepFailed
from rollback.runs.core import Run, run_command


class Command(Adapter):
    mode: ClassVar[str] = "command"

    def check(self, run: Run) -> list[str]:
        if not run.settings.target.deploy_command:
            raise ConfigError('[target] deploy_mode = "command" needs deploy_command')
        return []

    def describe(self, run: Run, head: str) -> list[str]:
        return [f"run `{run.settings.target.deploy_command}` in {run.repo}"]

    def start(self, run: Run, head: str) -> Started:
        target = run.settings.target
        assert target.deploy_command
        result = run_command(target.deploy_command, cwd=run.repo, timeout_s=target.deploy_timeout_s,
                             on_line=lambda line: run.note(f"deploy: {line}"), pass_fds=run.lock_fds)
        if result.returncode != 0:
            raise StepFailed(f"deploy command exited with {result.returncode}: "
                             f"{run.redact(result.tail())}")
        return Started(head, f"`{target.deploy_command}`")
