"""Flags: every tool's options are a dataclass, and this module turns it into a command line and
reads ``--config FILE`` for it. The one place that builds an argparse parser in the project.

Owns: ``flag`` (a field with its help, spelling, range and choices), ``Flags`` (the base whose
``__post_init__`` checks every field, then the class's own ``check()`` for combinations),
shared-group composition (a group is a dataclass of fields; a tool's flags inherit the groups they
need and may give a field another default with ``redefault``), ``parse`` / ``parse_commands``
(argv -> a checked instance), config files, and ``config_dict`` / ``format_config``. Must not
import torch, numpy or either stage: the preprocessing tools start with it.

Why a dataclass is the single source of truth: the flags, ``--help``, the printed config, the saved
``config.json`` and the keys a config file may hold are all read off the same fields, so they
cannot disagree, and the API (``PretrainConfig(lr=0.1)``) is checked exactly as the command line is.

Config files: a JSON object of flag values keyed by the long flag names without the dashes (the
presets under configs/); the tool's defaults < the file < the command line, and the file's keys and
values are checked like flags (``<tool>: error: configs/demo/pretrain.json: "lambda": 300: must be
an integer in [0, 255]``). A bad value ends the program with status 2 and one line naming the flag
(or the file and key), the value and what is allowed, before any data, cache or run directory is
touched (docs/errors.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from core.checks import check_choice, check_range
from core.errors import EXIT_USAGE, UsageError

__all__ = ["Flags", "flag", "redefault", "borrowed", "flag_name", "validate", "build_parser", "parse", "parse_commands",
           "read_config_file", "config_dict", "format_config", "CONFIG_HELP"]

CONFIG_HELP = ("a JSON file of flag values, e.g. configs/demo/<stage>.json: {\"batch-size\": 8, \"lambda\": 30, "
               "\"scales\": [48, 54], \"freeze-backbone\": true}; keys are the long flag names without the "
               "leading dashes (exactly as typed on the command line), values typed as the flag (a list for a "
               "flag that takes several values, true/false for a switch). Flags given on the command line "
               "override the file's values, which override the defaults")


# ---------------------------------------------------------------------------------------------
# Declaring flags
# ---------------------------------------------------------------------------------------------

def flag(default: Any = None, help: str = "", name: str | None = None, choices: Sequence | None = None, *,
         lo=None, hi=None, lo_open: bool = False, hi_open: bool = False, note: str = "",
         empty_ok: bool = False, required: bool = False, nargs: str | int | None = None,
         type: Callable | None = None, metavar: str | None = None, aliases: Sequence[str] = (),
         positional: bool = False):
    """A dataclass field that is also a flag.

    ``name`` overrides the spelling ``--field-name`` (``aliases`` are further spellings);
    ``lo``/``hi`` (open or closed) and ``choices`` are the allowed values, checked for the command
    line, config files and the API alike (every element of a list/tuple, which may be empty only
    with ``empty_ok``). A bool default makes a switch ``--x/--no-x``; a tuple or list default a
    flag taking several values (``nargs``: "*" unless given), and the field keeps that container
    type; ``type`` converts a value (default: the default's type, str for None); ``required``
    flags have no default (they may come from a config file); ``positional`` makes an argument
    without a dash."""
    md = {"help": help, "flag": name, "choices": tuple(choices) if choices is not None else None,
          "range": (lo, hi, lo_open, hi_open, note) if lo is not None or hi is not None else None,
          "empty_ok": empty_ok, "required": required, "nargs": nargs, "type": type, "metavar": metavar,
          "aliases": tuple(aliases), "positional": positional}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda d=tuple(default): list(d), metadata=md)
    return dataclasses.field(default=tuple(default) if isinstance(default, tuple) else default, metadata=md)


def redefault(group: type, name: str, default: Any, help: str | None = None):
    """The field ``name`` of a shared group with another default (and optionally another help
    text) for one tool, its spelling, range and choices unchanged: e.g. finetuning's weight decay
    ``weight_decay: float = redefault(OptimFlags, "weight_decay", 5e-4)``."""
    f = _fields(group)[name]
    md = dict(f.metadata)
    if help is not None:
        md["help"] = help
    return flag(default, **{k: v for k, v in _flag_kwargs(md).items()})


def borrowed(source: type, names: Sequence[str], note: str = "") -> list[tuple[str, Any, dataclasses.Field]]:
    """Fields of another tool's flags with default None ("not given": the tool takes the value
    from elsewhere, e.g. visualize.py preview from a run's pretrain config), spelling, help
    (+ ``note``), type, range and choices unchanged: for ``dataclasses.make_dataclass``."""
    out, fields = [], _fields(source)
    for name in names:
        f = fields[name]
        kw = _flag_kwargs(f.metadata)
        d = _default(f)
        kw["type"] = kw["type"] or (bool if isinstance(d, bool) else _value_type(f))
        if isinstance(d, (list, tuple)):
            kw["nargs"] = kw["nargs"] or "+"
        kw["help"] = f"{kw['help']} (default: {_show(d)}{note})"
        kw["required"] = False
        out.append((name, Any, flag(None, **kw)))
    return out


def _flag_kwargs(md: Mapping) -> dict:
    lo, hi, lo_open, hi_open, note = md["range"] or (None, None, False, False, "")
    return {"help": md["help"], "name": md["flag"], "choices": md["choices"], "lo": lo, "hi": hi,
            "lo_open": lo_open, "hi_open": hi_open, "note": note, "empty_ok": md["empty_ok"],
            "required": md["required"], "nargs": md["nargs"], "type": md["type"], "metavar": md["metavar"],
            "aliases": md["aliases"], "positional": md["positional"]}


def _fields(cls_or_obj) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls_or_obj) if f.metadata.get("help") is not None}


def flag_name(cls_or_cfg, field: str) -> str:
    """The command-line spelling of a field (e.g. lam -> --lambda)."""
    md = _fields(cls_or_cfg)[field].metadata
    if md["positional"]:
        return field
    return md["flag"] or "--" + field.replace("_", "-")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _value_type(f: dataclasses.Field) -> Callable:
    """What one value of the field is converted with."""
    md, d = f.metadata, _default(f)
    if md["type"] is not None:
        return md["type"]
    if isinstance(d, (list, tuple)):
        return type(d[0]) if d else str
    if d is None:
        return str
    return Path if isinstance(d, Path) else type(d)


def _is_many(f: dataclasses.Field) -> bool:
    return isinstance(_default(f), (list, tuple)) or f.metadata["nargs"] is not None


def validate(cfg) -> None:
    """Check every field's range and choices, then the object's own ``check()`` (combinations of
    flags); raise ``UsageError`` naming the flag, the value and what is allowed."""
    for name, f in _fields(cfg).items():
        v, md = getattr(cfg, name), f.metadata
        if v is None and (md["required"] or _default(f) is None):
            continue                                           # "not given": the tool decides
        if md["choices"] and (any(x not in md["choices"] for x in v) if isinstance(v, (list, tuple))
                              else v not in md["choices"]):
            bad = next((x for x in v if x not in md["choices"]), v) if isinstance(v, (list, tuple)) else v
            check_choice(flag_name(cfg, name), bad, md["choices"])
        if md["range"] and not (isinstance(v, (list, tuple)) and not v and md["empty_ok"]):
            lo, hi, lo_open, hi_open, note = md["range"]
            check_range(flag_name(cfg, name), v, lo, hi, lo_open, hi_open, note)
    check = getattr(cfg, "check", None)
    if callable(check):
        check()


class Flags:
    """Base of every tool's flag dataclass (and of the shared groups): a made object is a valid
    one, whether it came from the command line, a config file or Python."""

    def __post_init__(self):
        validate(self)


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------

class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the module docstring's layout (defaults are written into each flag's help)."""


def _show(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return " ".join(map(str, v)) if v else "(none)"
    return repr(v) if isinstance(v, str) else str(v)


def _add_fields(p, cls) -> None:
    """One argument per field; fields are grouped in --help by the group class declaring them."""
    groups: dict[type, Any] = {}
    owner = {}
    for klass in reversed(cls.__mro__):
        for name in getattr(klass, "__annotations__", {}):
            owner[name] = klass
    for name, f in _fields(cls).items():
        md, d = f.metadata, _default(f)
        klass = owner.get(name, cls)
        target = p
        if klass is not cls and klass.__doc__:
            if klass not in groups:
                groups[klass] = p.add_argument_group(klass.__doc__.strip().splitlines()[0].rstrip("."))
            target = groups[klass]
        help_text = md["help"] or ""
        if not md["required"] and not md["positional"] and not (d is None and "(default: " in help_text):
            help_text = f"{help_text} (default: {_show(d)})" if help_text else f"default: {_show(d)}"
        kw: dict[str, Any] = {"help": help_text or " "}
        if (isinstance(d, bool) or md["type"] is bool) and not _is_many(f):
            kw["action"] = argparse.BooleanOptionalAction      # never type=bool ("False" is truthy)
        else:
            kw["type"] = _value_type(f)
            if _is_many(f):
                kw["nargs"] = md["nargs"] or "*"
            if md["choices"]:
                kw["choices"] = md["choices"]
            if md["metavar"] or not md["choices"]:
                kw["metavar"] = md["metavar"] or (name.upper() if md["positional"]
                                                  else flag_name(cls, name).lstrip("-").upper().replace("-", "_"))
        if md["positional"]:
            kw.pop("help")
            target.add_argument(name, help=help_text or " ", **kw)
        else:
            target.add_argument(flag_name(cls, name), *md["aliases"], dest=name, **kw)


def build_parser(cls, description: str = "", prog: str | None = None,
                 parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The parser of a flag dataclass. Every argument's default is ``SUPPRESS``, so the parsed
    namespace holds exactly what the command line gave (the defaults and the config file are
    merged by ``parse``); ``--config FILE`` is added unless the class declares it."""
    # allow_abbrev=False: "--m" must never be read as a prefix of "--momentum" and the like
    p = parser or argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False,
                                          formatter_class=_HelpFormatter,
                                          argument_default=argparse.SUPPRESS)
    _add_fields(p, cls)
    if "config" not in _fields(cls) and getattr(cls, "config_file", True):
        p.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    return p


def _usage_exit(prog: str, e: UsageError):
    print(f"{prog}: error: {e}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE) from None


def _make(cls, given: dict, prog: str, parser: argparse.ArgumentParser):
    """defaults < --config FILE < the command line -> a checked instance of ``cls``."""
    fields = _fields(cls)
    path = given.pop("config", None)
    from_file: dict[str, tuple[str, Any, Any]] = {}
    if path is not None:
        try:
            from_file = read_config_file(path, cls, prog)
        except UsageError as e:
            _usage_exit(prog, e)
    values = {name: conv for name, (_, _, conv) in from_file.items()}
    values.update({k: _container(fields[k], v) for k, v in given.items()})
    missing = [flag_name(cls, n) for n, f in fields.items() if f.metadata["required"] and values.get(n) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    if "config" in fields:
        values["config"] = None if path is None else str(path)
    try:
        return cls(**values)
    except UsageError as e:
        name = next((n for n in fields if flag_name(cls, n) == e.flag), None)
        if name is not None and name in from_file and name not in given:
            key, raw, _ = from_file[name]                   # the bad value is the file's: say so
            e = UsageError(f'{path}: "{key}":', json.dumps(raw), e.allowed)
        _usage_exit(prog, e)


def _container(f: dataclasses.Field, v: Any) -> Any:
    """A parsed list in the field's own container (a tuple field stays a tuple)."""
    if isinstance(v, list) and isinstance(_default(f), tuple):
        return tuple(v)
    return v


def parse(cls, argv: Sequence[str] | None = None, description: str = "", prog: str | None = None):
    """Flags (and ``--config FILE``) -> a checked instance of the flag dataclass ``cls``; a bad
    value ends the program here with status 2 and one line."""
    prog = prog or os.path.basename(sys.argv[0])
    p = build_parser(cls, description, prog)
    ns = p.parse_args(sys.argv[1:] if argv is None else list(argv))
    return _make(cls, vars(ns), prog, p)


def parse_commands(commands: Mapping[str, tuple[type, str]], argv: Sequence[str] | None = None,
                   description: str = "", prog: str | None = None, epilog: str | None = None):
    """A tool with subcommands (``visualize.py preview ...``): {name: (flag class, help)} ->
    (name, checked instance)."""
    prog = prog or os.path.basename(sys.argv[0])
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog, allow_abbrev=False,
                                formatter_class=_HelpFormatter)
    sub = p.add_subparsers(dest="__command__", required=True, metavar="COMMAND")
    parsers = {}
    for name, (cls, help_text) in commands.items():
        doc = (cls.__doc__ or "").strip()
        sp = sub.add_parser(name, help=help_text, description=doc, allow_abbrev=False,
                            formatter_class=_HelpFormatter, argument_default=argparse.SUPPRESS)
        parsers[name] = build_parser(cls, parser=sp)
    given = vars(p.parse_args(sys.argv[1:] if argv is None else list(argv)))
    name = given.pop("__command__")
    return name, _make(commands[name][0], given, prog, parsers[name])


# ---------------------------------------------------------------------------------------------
# Config files: --config FILE
# ---------------------------------------------------------------------------------------------

def config_keys(cls) -> dict[str, str]:
    """{key a config file may hold: field}: each flag's long name without the dashes
    (--batch-size -> "batch-size", --lambda -> "lambda", --dilate/--no-dilate -> "dilate")."""
    return {flag_name(cls, n).lstrip("-"): n for n in _fields(cls) if n != "config"}


def _kind(t) -> tuple[str, Callable[[Any], bool]]:
    """(what a JSON value of a flag of type t must be, the test)."""
    if t is int:
        return "an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)
    if t is float:
        return "a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    return "a string", lambda v: isinstance(v, str)


def config_value(f: dataclasses.Field, value: Any) -> Any:
    """A JSON value -> what the flag would store, or ValueError(what is allowed)."""
    md, d = f.metadata, _default(f)
    if (isinstance(d, bool) or md["type"] is bool) and not _is_many(f):   # a switch: --x (and --no-x)
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if value is None and d is None and not md["required"]:
        return None                                          # null: the flag's default ("not given")
    null = " or null (the default)" if d is None and not md["required"] else ""
    t = _value_type(f)
    kind, ok = _kind(t)
    many = _is_many(f)
    if many:
        plural = kind.replace("an integer", "integers").replace("a number", "numbers").replace("a string", "strings")
        nargs = md["nargs"] or "*"
        need = {"+": "a non-empty list", "*": "a list"}.get(nargs, f"a list of {nargs}")
        if (not isinstance(value, list) or not all(ok(v) for v in value) or (nargs == "+" and not value)
                or (isinstance(nargs, int) and len(value) != nargs)):
            raise ValueError(f"must be {need} of {plural}{null}")
        items = value
    else:
        if not ok(value):
            raise ValueError(f"must be {kind}{null}")
        items = [value]
    try:
        items = [t(v) for v in items]
    except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
        raise ValueError(f"not accepted by the flag ({e})") from None
    if md["choices"] is not None and any(v not in md["choices"] for v in items):
        raise ValueError(f"must be {'each ' if many else ''}one of {', '.join(map(str, md['choices']))}")
    if many:
        return tuple(items) if isinstance(d, tuple) else list(items)
    return items[0]


def read_config_file(path, cls, prog: str = "") -> dict[str, tuple[str, Any, Any]]:
    """Read ``--config FILE`` for the flag dataclass ``cls``: {field: (key, value as written, value
    as the flag holds it)}. The file is one JSON object whose keys are ``config_keys(cls)``; an
    unreadable file, an unknown key or a wrongly typed value raises a UsageError naming the file
    and key."""
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
    keys, fields, out = config_keys(cls), _fields(cls), {}
    for key, value in data.items():
        name = keys.get(key)
        if name is None:
            raise UsageError(f"{path}:", f'unknown key "{key}"', _unknown_key_hint(key, cls, prog))
        try:
            out[name] = (key, value, config_value(fields[name], value))
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


def _unknown_key_hint(key: str, cls, prog: str) -> str:
    keys = config_keys(cls)
    for k, name in keys.items():                             # another spelling of a known flag
        md = _fields(cls)[name].metadata
        if key in {o.lstrip("-") for o in md["aliases"]} | {k.replace("-", "_"), name}:
            return f'write it "{k}" (keys are the flags of {prog} without the leading dashes)'
    close = difflib.get_close_matches(key.replace("_", "-"), list(keys), n=1)
    if close:
        return f'did you mean "{close[0]}"? (keys are the flags of {prog} without the leading dashes)'
    return f"keys are the flags of {prog} without the leading dashes: {', '.join(sorted(keys))}"


# ---------------------------------------------------------------------------------------------
# A config as data
# ---------------------------------------------------------------------------------------------

def config_dict(cfg) -> dict:
    """The flag values as JSON-ready data (tuples as lists, paths as strings)."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return str(v) if isinstance(v, Path) else v
    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


def format_config(cfg) -> str:
    d = config_dict(cfg)
    w = max(len(k) for k in d)
    return "\n".join(f"  {k:<{w}} = {v!r}" for k, v in d.items())
