"""Rewrite (or check) the controls tables a Markdown page computes from the measured cells.

A page marks each such table with the `train/controls.py` flags that select its cells:

    <!-- controls-table: --instances 0 --seeds 0 --arms mac,scratch -->
    Controls on the demo: ... | arm | metric | ... (the table.md that
    `controls.py --table-only --ledger docs/results/controls FLAGS` writes)
    <!-- /controls-table -->

so that a published number cannot drift from the records behind it (docs/results/controls,
train/ledger.py). A `<!-- controls-summary: FLAGS -->` block (closed by `<!-- /controls-summary -->`)
holds the short form the README shows: one row per arm, each metric's mean with its interval, the
pretext accuracy and the cells behind the row. A `<!-- controls-cells: FLAGS -->` block holds
cells.md: every cell's own accuracies, arm by cell. `tests/test_results_ledger.py` checks every block
of docs/demo.md and README.md.

    python scripts/doc_tables.py            # rewrite the blocks of docs/demo.md and README.md
    python scripts/doc_tables.py --check    # exit 1, naming each block that differs
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LEDGER = REPO / "docs" / "results" / "controls"
# a marker is a line of its own (a page may quote one inline)
BLOCK = re.compile(r"^(<!-- controls-(table|summary|cells): ([^\n]*?) -->\n)(.*?)^(<!-- /controls-\2 -->)$",
                   re.S | re.M)
PAGES = (REPO / "docs" / "demo.md", REPO / "README.md")


class Built(NamedTuple):
    """What the ledger's cells that a block's flags select give: table.md's text, its JSON record
    (controls.build_table) and the parsed flags (controls.ControlsFlags)."""

    table: str
    record: dict
    args: object


def _build(flags: str, ledger: Path) -> Built:
    """The tables of the ledger's cells that ``flags`` select; ValueError where a record is damaged
    or cannot be pooled (the table would leave it out silently)."""
    from core.flags import parse
    from train import controls as C

    args = parse(C.ControlsFlags, [*shlex.split(flags), "--table-only"], prog="controls.py")
    nowhere = Path("/nonexistent/controls")          # the ledger alone, never a local run's cells
    recs, problems = C.gather(nowhere, args.arm_list, args.instance_list, args.seed_list, ledger)
    if problems:
        raise ValueError(f"{ledger}: " + "; ".join(problems))
    table, _, record = C.build_table(nowhere, args.arm_list, args.instance_list, args.seed_list,
                                     args.fractions, args.bootstrap, recs=recs)
    return Built(table, record, args)


def table_for(flags: str, ledger: Path = LEDGER) -> str:
    """table.md of the ledger's cells that ``flags`` select (its header names the cells, the
    commits that trained them, what was left out)."""
    return _build(flags, ledger).table.strip() + "\n"


def summary_for(flags: str, ledger: Path = LEDGER) -> str:
    """The short table: one row per arm (each metric's mean [95 % CI] over instances and test
    videos, the pretext accuracy, instances x seeds), numbers from the same computation as
    table_for's."""
    from train import controls as C

    built = _build(flags, ledger)
    record, args = built.record, built.args
    metrics = C.metric_names(args.fractions)
    head = ["arm", *(title for _, title in metrics), "pretext (chance)", "instances x seeds"]
    videos = sorted({g["videos"] // len(g["instances"]) for per_arm in record["metrics"].values()
                     for g in per_arm.values()})
    seeds = ",".join(map(str, args.seed_list))
    out = [f"Test split 1 of each data instance ({' / '.join(map(str, videos))} videos, chance 16.7 %), read once; "
           "percent, mean [95 % CI] over instances and test videos (hierarchical bootstrap); cells from "
           f"docs/results/controls (training seed{'s' if len(args.seed_list) > 1 else ''} {seeds}). Rows pool the "
           "instances measured for that arm (last column): an arm against MAC on the same cells, with paired "
           "tests, is in docs/demo.md.", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in args.arm_list:
        got = {k: record["metrics"].get(k, {}).get(arm) for k, _ in metrics}
        first = next((g for g in got.values() if g), None)
        if first is None:
            continue
        cells = [f"{g['mean']:.1f} [{g['lo']:.1f}, {g['hi']:.1f}]" if g else "-" for g in got.values()]
        pt = record["pretext"].get(arm)
        pretext = f"{pt['mean']:.1f} ({pt['chance']:.1f})" if pt and arm not in C.UNTRAINED_HEAD else "-"
        shapes = sorted({f"{len(g['instances'])} x {g['seeds']}" for g in got.values() if g})
        out.append(f"| {C.LABELS[arm]} | " + " | ".join(cells) + f" | {pretext} | {', '.join(shapes)} |")
    return "\n".join(out) + "\n"


def cells_for(flags: str, ledger: Path = LEDGER) -> str:
    """cells.md of the ledger's cells that ``flags`` select (controls.cells_table)."""
    from core.flags import parse
    from train import controls as C

    args = parse(C.ControlsFlags, [*shlex.split(flags), "--table-only"], prog="controls.py")
    recs, problems = C.gather(Path("/nonexistent/controls"), args.arm_list, args.instance_list, args.seed_list,
                              ledger)
    if problems:
        raise ValueError(f"{ledger}: " + "; ".join(problems))
    return C.cells_table(recs, args.arm_list, args.instance_list, args.seed_list, args.fractions)


def blocks(text: str) -> list[tuple[str, str, str]]:
    """[(kind, flags, table shown)] of every marked block: kind "table", "summary" or "cells"."""
    return [(m.group(2), m.group(3), m.group(4)) for m in BLOCK.finditer(text)]


def render(kind: str, flags: str, ledger: Path = LEDGER) -> str:
    return {"summary": summary_for, "cells": cells_for}.get(kind, table_for)(flags, ledger)


def rewrite(text: str, ledger: Path = LEDGER) -> str:
    return BLOCK.sub(lambda m: m.group(1) + render(m.group(2), m.group(3), ledger) + m.group(5), text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pages", nargs="*", type=Path, default=list(PAGES))
    ap.add_argument("--ledger", type=Path, default=LEDGER)
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block differs")
    a = ap.parse_args(argv)
    status = 0
    for page in a.pages:
        text = page.read_text()
        if not blocks(text):
            print(f"{page}: no <!-- controls-table: ... --> or <!-- controls-summary: ... --> block", file=sys.stderr)
            status = 1
            continue
        new = rewrite(text, a.ledger)
        if a.check:
            stale = [f for (_, f, shown), (_, _, want) in zip(blocks(text), blocks(new)) if shown != want]
            for f in stale:
                print(f"{page}: the table for '{f}' differs from the ledger's; run python scripts/doc_tables.py",
                      file=sys.stderr)
            status = status or (1 if stale else 0)
        elif new != text:
            tmp = page.with_name(page.name + ".tmp")
            tmp.write_text(new)
            tmp.replace(page)
            print(f"{page}: {len(blocks(new))} table(s) rewritten from {a.ledger}")
    return status


if __name__ == "__main__":
    sys.exit(main())
