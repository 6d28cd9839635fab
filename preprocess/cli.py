"""How every command-line tool of the project checks its values and ends: one message and a
documented exit status for every expected failure, a traceback only for a bug.

Exit status, the same for all tools:
    0    done
    1    some items failed, the others are done (extract_masks.py: see failures.txt)
    2    a problem of the command or its environment, explained in one message: a bad flag value
         (checked before any data or cache is touched), a missing or damaged cache, a full disk,
         a read-only or unwritable path
    3    an internal error: a bug, printed with its traceback and a line saying so
    130  interrupted (Ctrl-C); every tool writes atomically, so a rerun resumes or redoes the work

Values are checked by ``check_range`` / ``check_choice`` (and the trainers' config dataclasses,
which call them): a ``UsageError`` carries the flag, the value and what is allowed, and ``run``
turns it into ``<tool>: error: --k 1: must be an integer >= 2``. Kept free of heavy imports (no
torch): the preprocessing tools use it too.

Config files: ``parse_checked(..., config=True)`` gives a tool ``--config FILE``, a JSON object of
flag values keyed by the long flag names without the dashes (the presets under configs/); the
tool's defaults < the file < the command line, and the file's keys and values are checked like
flags (``<tool>: error: configs/demo/pretrain.json: "lambda": 300: must be an integer in [0, 255]``).
"""
from __future__ import annotations

import argparse
import difflib
import errno
import json
import math
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

EXIT_OK, EXIT_FAILED_ITEMS, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

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


class UsageError(ToolError):
    """A bad value of one flag (or of a combination of flags), found before any work starts."""

    def __init__(self, flag: str, value: Any, allowed: str):
        self.flag, self.value, self.allowed = flag, value, allowed
        shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        super().__init__(f"{flag} {shown}: {allowed}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))


def describe_range(lo=None, hi=None, lo_open: bool = False, hi_open: bool = False, integer: bool = False) -> str:
    kind = "an integer" if integer else "a number"
    if lo is not None and hi is not None:
        return f"must be {kind} in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"must be {kind} {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"must be {kind} {'<' if hi_open else '<='} {hi:g}"
    return f"must be {kind}"


def in_range(v: Any, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False) -> bool:
    if not _is_number(v) or math.isinf(v):
        return False
    if lo is not None and not (v > lo if lo_open else v >= lo):
        return False
    if hi is not None and not (v < hi if hi_open else v <= hi):
        return False
    return True


def check_range(flag: str, value: Any, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False,
                note: str = "") -> None:
    """Raise UsageError unless `value` (or every element of a list/tuple, which must not be empty)
    lies in the range; NaN never does."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    integer = all(isinstance(v, int) for v in values)
    allowed = describe_range(lo, hi, lo_open, hi_open, integer) + (f" ({note})" if note else "")
    if isinstance(value, (list, tuple)):
        allowed = allowed.replace("must be ", "must be one or more values, each ", 1)
        if not values:
            raise UsageError(flag, "(empty)", allowed)
    if not all(in_range(v, lo, hi, lo_open, hi_open) for v in values):
        raise UsageError(flag, value, allowed)


def check_choice(flag: str, value: Any, choices: Iterable) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise UsageError(flag, value, f"must be one of {', '.join(map(str, choices))}")


def check_optional(flag: str, value: Any, *args, **kw) -> None:
    """check_range for a flag whose default None means "take it from elsewhere"."""
    if value is not None:
        check_range(flag, value, *args, **kw)


def check_file(flag: str, path: Any) -> None:
    if path is not None and not os.path.isfile(path):
        raise UsageError(flag, path, "no such file")


def parse_checked(parser, argv: list[str] | None, check: Callable[[Any], None], config: bool = False):
    """``parser.parse_args(argv)`` followed by ``check(args)``: a UsageError ends the program
    with status 2 and one line naming the flag, the value and what is allowed.

    With ``config=True`` the parser also takes ``--config FILE`` (see ``read_config_file``): the
    file's values replace the parser's defaults and the flags on the command line override both
    (defaults < file < command line). A bad file, key or value ends the program the same way,
    the line naming the file and the key; ``args.config`` is the file's path (None without one)."""
    if not config:
        args = parser.parse_args(argv)
        try:
            check(args)
        except UsageError as e:
            _usage_exit(parser, e)
        return args
    if "--config" not in parser._option_string_actions:
        parser.add_argument("--config", metavar="FILE", default=None, help=CONFIG_HELP)
    argv = sys.argv[1:] if argv is None else list(argv)
    given = _given_on_command_line(parser, argv)
    path, from_file = given.get("config"), {}
    if path is not None:
        try:
            from_file = read_config_file(path, parser)
        except UsageError as e:
            _usage_exit(parser, e)
        for action in parser._actions:
            if action.dest in from_file:
                action.required = False              # a required flag may come from the file
        parser.set_defaults(**{dest: value for dest, (_, _, value) in from_file.items()})
    args = parser.parse_args(argv)
    try:
        check(args)
    except UsageError as e:
        action = parser._option_string_actions.get(e.flag)
        if action is not None and action.dest in from_file and action.dest not in given:
            key, raw, _ = from_file[action.dest]       # the bad value is the file's: say so
            e = UsageError(f'{path}: "{key}":', json.dumps(raw), e.allowed)
        _usage_exit(parser, e)
    return args


def _usage_exit(parser, e: UsageError):
    print(f"{parser.prog}: error: {e}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE) from None


# ---------------------------------------------------------------------------------------------
# Config files: --config FILE
# ---------------------------------------------------------------------------------------------

CONFIG_HELP = ("a JSON file of flag values, e.g. configs/demo/<stage>.json: {\"batch-size\": 8, \"lambda\": 30, "
               "\"scales\": [48, 54], \"freeze-backbone\": true}; keys are the long flag names without the "
               "leading dashes (exactly as typed on the command line), values typed as the flag (a list for a "
               "flag that takes several values, true/false for a switch). Flags given on the command line "
               "override the file's values, which override the defaults")

_UNSET = object()


def _given_on_command_line(parser, argv: list[str]) -> dict[str, Any]:
    """{dest: value} of the flags argv itself sets (no defaults): argv parsed into a namespace
    that already holds every dest, so argparse fills in nothing (required flags may be absent
    here: they can come from the file)."""
    ns = argparse.Namespace(**{a.dest: _UNSET for a in parser._actions if a.dest != argparse.SUPPRESS})
    required = [(a, a.required) for a in parser._actions]
    try:
        for a, _ in required:
            a.required = False
        parser.parse_known_args(argv, ns)
    finally:
        for a, r in required:
            a.required = r
    return {k: v for k, v in vars(ns).items() if v is not _UNSET}


def config_keys(parser) -> dict[str, argparse.Action]:
    """The keys a config file may hold for this parser: each flag's first long name without the
    dashes (--batch-size -> "batch-size", --lambda -> "lambda", --dilate/--no-dilate -> "dilate")."""
    keys = {}
    for a in parser._actions:
        if a.dest in (argparse.SUPPRESS, "help", "config") or isinstance(a, (argparse._HelpAction, argparse._VersionAction)):
            continue
        names = [o for o in a.option_strings if o.startswith("--")]
        if names:
            keys[names[0][2:]] = a
    return keys


def _kind(t) -> tuple[str, Callable[[Any], bool]]:
    """(what a JSON value of a flag of type t must be, the test)."""
    if t is int:
        return "an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)
    if t is float:
        return "a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    return "a string", lambda v: isinstance(v, str)


def config_value(action: argparse.Action, value: Any) -> Any:
    """A JSON value -> what the flag would store, or ValueError(what is allowed)."""
    if action.nargs == 0:                                   # a switch: --x (and --no-x)
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        if isinstance(action, argparse.BooleanOptionalAction):
            return value
        return action.const if value else action.default    # store_true / store_false / store_const
    if value is None and action.default is None and not action.required:
        return None                                         # null: the flag's default ("not given")
    null = " or null (the default)" if action.default is None else ""
    kind, ok = _kind(action.type)
    many = action.nargs in ("*", "+") or isinstance(action.nargs, int)
    if many:
        plural = kind.replace("an integer", "integers").replace("a number", "numbers").replace("a string", "strings")
        need = {"+": "a non-empty list", "*": "a list"}.get(action.nargs, f"a list of {action.nargs}")
        if (not isinstance(value, list) or not all(ok(v) for v in value) or (action.nargs == "+" and not value)
                or (isinstance(action.nargs, int) and len(value) != action.nargs)):
            raise ValueError(f"must be {need} of {plural}{null}")
        items = value
    else:
        if not ok(value):
            raise ValueError(f"must be {kind}{null}")
        items = [value]
    conv = action.type if callable(action.type) else (lambda v: v)
    try:
        items = [conv(v) for v in items]
    except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
        raise ValueError(f"not accepted by the flag ({e})") from None
    if action.choices is not None and any(v not in action.choices for v in items):
        raise ValueError(f"must be {'each ' if many else ''}one of {', '.join(map(str, action.choices))}")
    return items if many else items[0]


def read_config_file(path, parser) -> dict[str, tuple[str, Any, Any]]:
    """Read ``--config FILE`` for this parser: {dest: (key, value as written, value as the flag
    holds it)}. The file is one JSON object whose keys are ``config_keys(parser)``; an unreadable
    file, an unknown key or a wrongly typed value raises a UsageError naming the file and key."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        why = "no such file" if isinstance(e, FileNotFoundError) else (e.strerror or "cannot be read").lower()
        raise UsageError("--config", path, why) from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except ValueError as e:
        raise UsageError(f"{path}:", "not valid JSON", str(e)) from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}:", "not a JSON object", 'must be {"flag-name": value, ...}')
    keys, out = config_keys(parser), {}
    for key, value in data.items():
        action = keys.get(key)
        if action is None:
            raise UsageError(f"{path}:", f'unknown key "{key}"', _unknown_key_hint(key, keys, parser.prog))
        try:
            out[action.dest] = (key, value, config_value(action, value))
        except ValueError as e:
            raise UsageError(f'{path}: "{key}":', json.dumps(value), str(e)) from None
    return out


def _no_duplicate_keys(pairs: list) -> dict:
    seen = set()
    for k, _ in pairs:
        if k in seen:
            raise ValueError(f'the key "{k}" appears twice')
        seen.add(k)
    return dict(pairs)


def _unknown_key_hint(key: str, keys: dict, prog: str) -> str:
    for k, a in keys.items():                                # another spelling of a known flag
        if key in {o.lstrip("-") for o in a.option_strings} | {k.replace("-", "_"), a.dest}:
            return f'write it "{k}" (keys are the flags of {prog} without the leading dashes)'
    close = difflib.get_close_matches(key.replace("_", "-"), list(keys), n=1)
    if close:
        return f'did you mean "{close[0]}"? (keys are the flags of {prog} without the leading dashes)'
    return f"keys are the flags of {prog} without the leading dashes: {', '.join(sorted(keys))}"


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
