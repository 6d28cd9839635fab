"""Errors and exit statuses: how every command-line tool of the project ends. One message and a
documented status for every expected failure, a traceback only for a bug.

Owns: the exit-status contract, ``ToolError`` / ``UsageError``, turning an OSError the user can fix
(full disk, permissions) into one line, and ``run`` / ``exit_with``, the wrapper every tool's
``main`` runs under. Must not import torch, numpy or either stage (``preprocess``, ``train``): both
stages import it.

Exit status, the same for all tools (docs/errors.md lists what each tool does with bad input):
    0    done
    1    some items failed, the others are done (extract_masks.py: see failures.txt)
    2    a problem of the command or its environment, explained in one message: a bad flag value
         (checked before any data or cache is touched), a missing or damaged cache, a full disk,
         a read-only or unwritable path
    3    an internal error: a bug, printed with its traceback and a line saying so
    130  interrupted (Ctrl-C); every tool writes atomically, so a rerun resumes or redoes the work
    143  the trainers, stopped by a stop signal (SIGTERM / SIGUSR1: a cluster preempting the job) after
         writing a mid-epoch checkpoint; the same command with --resume continues exactly
"""
from __future__ import annotations

import errno
import os
import re
import sys
import traceback
from typing import Any, Callable

EXIT_OK, EXIT_FAILED_ITEMS, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_PREEMPTED = 143   # 128 + SIGTERM: stopped by a stop signal after writing a checkpoint; --resume continues

# errno -> what the user reads; the fix follows from it (free space, fix permissions, ...)
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large for the file system or its limits",
    errno.EMFILE: "too many open files (raise `ulimit -n` or use fewer --workers)",
}


class ToolError(Exception):
    """An expected failure that its message explains, with the fix (a damaged cache, a refused
    checkpoint, a split leak, ...): status 2, no traceback. Raised in a DataLoader or joblib
    worker it arrives wrapped in the worker's traceback text, which ``run`` strips."""


def tool_error_message(e: BaseException) -> str:
    msg = str(e)
    if "Traceback (most recent call last)" in msg:       # re-raised from a worker process
        tail = msg.rsplit(f"{type(e).__name__}: ", 1)
        msg = tail[1].strip() if len(tail) == 2 else msg
    return msg


class Preempted(Exception):
    """A training run stopped by a stop signal after writing its checkpoint (status 143)."""


class UsageError(ToolError):
    """A bad value of one flag (or of a combination of flags), found before any work starts."""

    def __init__(self, flag: str, value: Any, allowed: str):
        self.flag, self.value, self.allowed = flag, value, allowed
        shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        super().__init__(f"{flag} {shown}: {allowed}")


def environment_error(e: BaseException) -> str | None:
    """A one-line description of an OSError the user can fix (full disk, permissions, ...),
    else None."""
    if isinstance(e, OSError):
        code = e.errno
        if code is None:   # HDF5 reports a failed write in its message only
            m = re.search(r"errno = (\d+)", str(e))
            code = int(m.group(1)) if m else (errno.ENOSPC if "No space left" in str(e) else None)
        if code in ENVIRONMENT_ERRNOS:
            return ENVIRONMENT_ERRNOS[code] + (f": {e.filename}" if e.filename else "")
    cause = e.__cause__ or e.__context__
    return environment_error(cause) if cause is not None and cause is not e else None


def run(main: Callable[[list[str] | None], Any], prog: str, argv: list[str] | None = None) -> int:
    """Run a tool's ``main(argv)`` and map its outcome to the exit status above.

    ``main`` returns an int status (or anything else for 0) or raises: SystemExit passes through
    (argparse's own usage errors are already status 2; ``SystemExit("message")`` becomes status
    2); a ToolError, an environment OSError and KeyboardInterrupt become one message on stderr;
    anything else is a bug."""
    try:
        rc = main(argv)
        return rc if isinstance(rc, int) and not isinstance(rc, bool) else EXIT_OK
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(f"{prog}: error: {e.code}", file=sys.stderr)   # raise SystemExit("message")
        return EXIT_USAGE
    except ToolError as e:
        print(f"{prog}: error: {tool_error_message(e)}", file=sys.stderr)
        return EXIT_USAGE
    except Preempted as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; completed work is kept (every file is written atomically), rerun the "
              f"same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException as e:   # noqa: BLE001 - the last line of defence
        env = environment_error(e)
        if env is not None:
            print(f"{prog}: error: {env}. Nothing half-written was kept; make room (or fix the permissions) "
                  f"and rerun the same command to continue.", file=sys.stderr)
            return EXIT_USAGE
        traceback.print_exc()
        print(f"{prog}: internal error (a bug, not a problem of your data or command): please report it with "
              f"the traceback above", file=sys.stderr)
        return EXIT_BUG


def exit_with(main: Callable[[list[str] | None], Any], prog: str | None = None) -> None:
    """``if __name__ == "__main__": exit_with(main)``."""
    sys.exit(run(main, prog or os.path.basename(sys.argv[0])))
