"""`deploy_mode = "git"`: the rollback branch merged into `[target] branch` and pushed to
`[target] remote`, which is how a git-integrated Vercel project (the real platform) deploys.

`publish` is also what the Publish step runs after any other adapter: the deploy branch must carry
the revert, or its next push ships the phase again.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rollback.deploy import Adapter, Started
from rollback.errors import ConfigError, StepFailed
from rollback.runs import gitops
from rollback.runs.core import Run


class Git(Adapter):
    mode: ClassVar[str] = "git"
    publishes: ClassVar[bool] = True
    #: once pushed, the deploy branch has the revert whatever production does
    leaves_original_on_failure: ClassVar[bool] = False

    def check(self, run: Run) -> list[str]:
        target = run.settings.target
        if target.remote not in gitops.remotes(run.repo):
            raise ConfigError(f"[target] remote = \"{target.remote}\": {run.repo} has no such remote "
                              f"(it has: {', '.join(gitops.remotes(run.repo)) or 'none'}); "
                              "deploy_mode = \"git\" deploys by pushing there")
        return []

    def describe(self, run: Run, head: str) -> list[str]:
        return publish_lines(run)

    def start(self, run: Run, head: str) -> Started:
        facts = publish(run, head)
        target = run.settings.target
        return Started(str(facts["head"]), f"pushed to {target.remote}/{target.branch}",
                       {"published": facts})


def publish_lines(run: Run) -> list[str]:
    target = run.settings.target
    remote = target.remote if target.remote in gitops.remotes(run.repo) else None
    return [f"merge {run.rollback_branch} into {target.branch} (a fast-forward when "
            f"{target.branch} has not moved) and check {target.branch} out",
            f"push {target.branch} to {remote}" if remote else
            f"no remote {target.remote!r}: {target.branch} is updated locally only"]


def publish(run: Run, head: str) -> dict[str, Any]:
    """Merge `head` into the deploy branch and push it; returns what was published."""
    repo, target = run.repo, run.settings.target
    deploy = target.branch
    phase = run.options.phase
    if not gitops.branch_exists(repo, deploy):
        raise StepFailed(f"the deploy branch {deploy!r} ([target] branch) does not exist in "
                         f"{repo}: the revert stays on {run.rollback_branch} only; merge it "
                         "into the branch your platform deploys from")
    contains = gitops.git(repo, "merge-base", "--is-ancestor", head, deploy, check=False).returncode == 0
    if gitops.current_branch(repo) != deploy:
        gitops.git(repo, "checkout", "-q", deploy)
    if not contains:
        merged = gitops.git(repo, "merge", "-q", "--ff", "--no-edit", "-m",
                            f"Merge {run.rollback_branch}: roll {phase} back\n\n"
                            f"{gitops.RUN_TRAILER}: {run.run_id}", head, check=False)
        if merged.returncode != 0:
            gitops.git(repo, "merge", "--abort", check=False)
            gitops.git(repo, "checkout", "-q", "-f", run.rollback_branch)
            raise StepFailed(
                f"{deploy} moved since the rollback began and does not merge with "
                f"{run.rollback_branch} ({gitops.git_error(merged)}): {deploy} still carries "
                f"{phase}, so its next deploy ships it again; merge {run.rollback_branch} into "
                f"{deploy} by hand, then rerun `rollback run {phase}` to finish")
    published = gitops.head(repo)
    pushed = None
    if target.remote in gitops.remotes(repo):
        done = gitops.git(repo, "push", "-q", target.remote, f"{deploy}:refs/heads/{deploy}", check=False)
        if done.returncode != 0:
            raise StepFailed(f"push of {deploy} to {target.remote} failed ({gitops.git_error(done)}): "
                             f"{deploy} carries the revert locally only; push it, then rerun to finish")
        pushed = target.remote
    run.say(f"{deploy} at {published[:12]} carries the revert"
            + (f", pushed to {pushed}" if pushed else " (no remote: locally only)"))
    return {"branch": deploy, "head": published, "remote": pushed}
