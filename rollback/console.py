"""What every command shares at the edge: the consoles, and errors turned into one line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape

from rollback.errors import RollbackError

F = TypeVar("F", bound=Callable[..., Any])

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def edge(func: F) -> F:
    """Run a command; a RollbackError becomes one line on stderr and its exit code, and so does
    a write the disk refuses (full, read-only, no permission), with exit 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RollbackError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            err.print("interrupted")
            sys.exit(130)
        except OSError as exc:  # a full or read-only disk wherever a command writes: one line
            from rollback.runs.journal import STORAGE_ERRNOS

            if exc.errno not in STORAGE_ERRNOS or exc.filename is None:
                raise
            err.print(f"[bold red]error:[/] cannot write {escape(str(exc.filename))}: "
                      f"{STORAGE_ERRNOS[exc.errno]}; free space or make it writable, then run "
                      "the command again", soft_wrap=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]
