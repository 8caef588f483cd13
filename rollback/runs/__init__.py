"""Rollback runs: the drivers of FASE 1-3 as named steps, with their journal, locks and undo.

    rollback.runs.driver    plan / execute / restore / history: what the CLI calls
    rollback.runs.steps     the steps (pre-flight, baseline, backup, code, build, deploy,
                            publish, database, gate, communicate), each usable on its own
    rollback.runs.core      the Run every step works with, the Step contract, the console
    rollback.runs.journal   the JSON-lines journal of a run, replayed for resume and history
    rollback.runs.locks     the repository lock file and the PostgreSQL advisory lock
    rollback.runs.gitops    phase commits as the profile's manifest finds them, reverts,
                            putting a repository back
    rollback.runs.phasecode one phase's files and hunks out of a commit that carries several
    rollback.runs.dbops     FASE 2 backup/convert/restore in batches, FASE 3 objects
    rollback.runs.comms     the guide's messages rendered with Jinja2, sent through Apprise
"""
