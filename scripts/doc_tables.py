"""Rewrite (or check) the controls tables a Markdown page computes from the measured cells.

A page marks each such table with the `train/controls.py` flags that select its cells:

    <!-- controls-table: --instances 0 --seeds 0 --arms mac,scratch -->
    Controls on the demo: ... | arm | metric | ... (the table.md that
    `controls.py --table-only --ledger docs/results/controls FLAGS` writes)
    <!-- /controls-table -->

so that a published number cannot drift from the records behind it (docs/results/controls,
train/ledger.py). `tests/test_results_ledger.py` checks every block of docs/demo.md.

    python scripts/doc_tables.py            # rewrite docs/demo.md's blocks from the ledger
    python scripts/doc_tables.py --check    # exit 1, naming each block that differs
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LEDGER = REPO / "docs" / "results" / "controls"
# a marker is a line of its own (a page may quote one inline)
BLOCK = re.compile(r"^(<!-- controls-table: ([^\n]*?) -->\n)(.*?)^(<!-- /controls-table -->)$", re.S | re.M)


def table_for(flags: str, ledger: Path = LEDGER) -> str:
    """table.md of the ledger's cells that ``flags`` select (its header names the cells, the
    commits that trained them, what was left out); ValueError
    where a record is damaged or cannot be pooled (the table would leave it out silently)."""
    from core.flags import parse
    from train import controls as C

    args = parse(C.ControlsFlags, [*shlex.split(flags), "--table-only"], prog="controls.py")
    nowhere = Path("/nonexistent/controls")          # the ledger alone, never a local run's cells
    recs, problems = C.gather(nowhere, args.arm_list, args.instance_list, args.seed_list, ledger)
    if problems:
        raise ValueError(f"{ledger}: " + "; ".join(problems))
    table, _, _ = C.build_table(nowhere, args.arm_list, args.instance_list, args.seed_list,
                                args.fractions, args.bootstrap, recs=recs)
    return table.strip() + "\n"


def blocks(text: str) -> list[tuple[str, str]]:
    """[(flags, table shown)] of every marked block."""
    return [(m.group(2), m.group(3)) for m in BLOCK.finditer(text)]


def rewrite(text: str, ledger: Path = LEDGER) -> str:
    return BLOCK.sub(lambda m: m.group(1) + table_for(m.group(2), ledger) + m.group(4), text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("page", nargs="?", type=Path, default=REPO / "docs" / "demo.md")
    ap.add_argument("--ledger", type=Path, default=LEDGER)
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block differs")
    a = ap.parse_args(argv)
    text = a.page.read_text()
    if not blocks(text):
        print(f"{a.page}: no <!-- controls-table: ... --> block", file=sys.stderr)
        return 1
    new = rewrite(text, a.ledger)
    if a.check:
        stale = [f for (f, shown), (_, want) in zip(blocks(text), blocks(new)) if shown != want]
        for f in stale:
            print(f"{a.page}: the table for '{f}' differs from the ledger's; run python scripts/doc_tables.py",
                  file=sys.stderr)
        return 1 if stale else 0
    if new != text:
        tmp = a.page.with_name(a.page.name + ".tmp")
        tmp.write_text(new)
        tmp.replace(a.page)
        print(f"{a.page}: {len(blocks(new))} table(s) rewritten from {a.ledger}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
