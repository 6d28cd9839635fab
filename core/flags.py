"""TEMP"""
from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any, Callable

from core.errors import EXIT_USAGE, UsageError


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


