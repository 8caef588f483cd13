"""The toolkit's one exception hierarchy. Every message says what failed and what to do next.

    RollbackError                 base; carries the process exit code
    ├── UsageError        (2)     bad command-line input
    │   └── ConfigError   (2)     a bad or missing setting, named by its variable or key
    ├── StepFailed        (1)     a step of a run, or a sandbox operation, did not succeed
    │   └── GateFailed    (1)     the validation gate at the end of a run failed
    └── Interrupted     (130)     the run was cut short and can be resumed

The CLI turns these into one line on stderr and the exit code; nothing else prints tracebacks.
"""

from __future__ import annotations


class RollbackError(Exception):
    """Base of every error the toolkit reports to its user."""

    exit_code = 1


class UsageError(RollbackError):
    """The command line asked for something that cannot be done as written."""

    exit_code = 2


class ConfigError(UsageError):
    """A setting is missing or invalid; the message names the variable or key and what it expects."""


class StepFailed(RollbackError):
    """A step did not succeed; the state it left is described in the message."""


class GateFailed(StepFailed):
    """The validation gate failed after the change was made."""


class Interrupted(RollbackError):
    """The run was interrupted; running the same command again resumes it."""

    exit_code = 130
