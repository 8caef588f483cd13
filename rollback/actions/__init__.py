"""What a phase changes in the database, one module per kind of change a profile can name
(`[platform.phases.X] database`). Each kind is planned, backed up, applied as a step of the run
and undone by `rollback restore`:

    convert_branch_keys   branch_keys.py     FASE 2: branch keys become tenant keys; runs BEFORE
                                             the deploy, so that code which no longer knows branch
                                             keys is never live while branch keys exist
    drop_objects          fase3_objects.py   FASE 3: option 2 drops the objects its migrations
                                             leave; runs AFTER the deploy, once no live code uses
                                             them (option 1 keeps them)

A run covers one phase, or with `--whole-commit` every phase its commits carry, and then gets the
action of each of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from rollback.runs.core import Options, Run, Step

if TYPE_CHECKING:
    import psycopg


class DatabaseAction:
    """One phase's database change. Subclasses set `kind` and `before_deploy` and implement the
    hooks; a hook that has nothing to do for the run's options returns nothing."""

    kind: ClassVar[str] = ""
    #: whether the step goes before the deploy (else after it)
    before_deploy: ClassVar[bool] = False

    def __init__(self, phase: str) -> None:
        self.phase = phase

    def active(self, options: Options) -> bool:
        """Whether this run changes the database at all (FASE 3 option 1 does not)."""
        return True

    def step_name(self, run_phase: str) -> str:
        """`database` for the run's own phase; `database-faseN` for another phase of a whole commit."""
        return "database" if self.phase == run_phase else f"database-{self.phase}"

    def pending(self, run: Run, conn: psycopg.Connection[Any]) -> tuple[str, int]:
        """(fact name, how many things are left to change), read-only: pre-flight's phase state."""
        raise NotImplementedError

    def describe_backup(self, run: Run) -> tuple[list[str], dict[str, Any]]:
        return [], {}

    def backup(self, run: Run) -> tuple[list[str], dict[str, Any]]:
        """Save what the step will change; returns (summary parts, facts)."""
        return [], {}

    def step(self, run_phase: str) -> Step:
        raise NotImplementedError

    def restore(self, run: Run) -> str:
        """Undo what a run changed (`rollback restore`); returns its summary."""
        raise NotImplementedError

    def undo_hint(self, run: Run) -> str | None:
        """How to undo this run's change, for the messages after a failed gate."""
        return None


class DatabaseStep(Step):
    """The step of an action, named by the phase it is for (see DatabaseAction.step_name)."""

    changes = True

    def __init__(self, name: str = "database") -> None:
        self.name = name


def action_for(kind: str, phase: str) -> DatabaseAction | None:
    """The action of a phase whose profile names `kind` (`none` and "" have none)."""
    from rollback.actions.branch_keys import ConvertBranchKeys
    from rollback.actions.fase3_objects import DropObjects

    kinds: dict[str, type[DatabaseAction]] = {ConvertBranchKeys.kind: ConvertBranchKeys,
                                              DropObjects.kind: DropObjects}
    found = kinds.get(kind)
    return found(phase) if found else None
