"""Rollback runs: the drivers of FASE 1-3 as named steps, with their journal, locks and undo.

    rollback.runs.driver    plan / execute / restore / history: what the CLI calls
    rollback.runs.steps     the generic steps (pre-flight, baseline, backup, code, build,
                            deploy, publish, gate, communicate), each usable on its own
    rollback.runs.core      the Run every step works with, the Step contract, the console
    rollback.runs.journal   the JSON-lines journal of a run, replayed for resume and history
    rollback.runs.locks     the repository lock file and the PostgreSQL advisory lock
    rollback.runs.gitops    phase commits as the profile's manifest finds them, reverts,
                            putting a repository back
    rollback.runs.phasecode one phase's files and hunks out of a commit that carries several
    rollback.runs.dbops     connections, catalog look-ups, row checksums, the batch policy
    rollback.runs.comms     the guide's messages rendered with Jinja2, sent through Apprise

Beside it, one module per kind of change: rollback.actions (each phase's database action:
its step, backup and restore) and rollback.deploy (each deploy adapter).
"""
