"""Value checks shared by every tool's flags: a failed check raises ``UsageError`` naming the flag,
the value and what is allowed (``--k 1: must be an integer >= 2``).

Owns: ranges, choices and file checks on plain values. Must not import torch, numpy or either
stage; the flag declarations (core/flags.py) call these on every field.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterable

from core.errors import UsageError


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


