"""The measured controls cells kept in docs/results/controls, and the tables docs/demo.md shows
from them: the published numbers are recomputed from the evidence on every run of the suite."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


LEDGER = REPO / "docs" / "results" / "controls"


def test_the_committed_ledger_is_sound():
    """Every committed record loads, names the code that trained it, and one instance's cells
    were all measured on the same frames (else the tables would refuse to pool them)."""
    from train import ledger as L

    recs, problems = L.load_dir(LEDGER)
    assert problems == [] and len(recs) >= 8
    for (inst, seed, arm), r in recs.items():
        assert Path(r["_source"]).name == L.file_name(inst, seed, arm)
        assert r["git"] and r["cache"] and "evaluate_all" in r["stages"], r["_source"]
    for inst in {k[0] for k in recs}:
        assert len({r["cache"] for k, r in recs.items() if k[0] == inst}) == 1, f"instance {inst}"


def test_the_tables_in_docs_demo_are_the_ledgers():
    """Each table docs/demo.md marks as computed from the ledger is exactly what
    `controls.py --table-only --ledger docs/results/controls <its flags>` writes today: the
    published numbers cannot drift from the evidence (scripts/doc_tables.py rewrites them)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("doc_tables", REPO / "scripts" / "doc_tables.py")
    dt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dt)
    found = dt.blocks((REPO / "docs" / "demo.md").read_text())
    assert len(found) >= 2, "docs/demo.md marks fewer tables computed from the ledger than it shows"
    for flags, shown in found:
        assert "| MAC (MAC-S) | finetuned, all labels |" in shown
        assert shown == dt.table_for(flags), (f"docs/demo.md's table for '{flags}' differs from the "
                                              "ledger's: python scripts/doc_tables.py rewrites it")


def test_doc_tables_rewrites_a_stale_block_and_check_names_it(tmp_path):
    """A block whose numbers were edited by hand is found by --check (exit 1) and restored."""
    import subprocess
    import sys

    flags = "--instances 0 --seeds 0 --arms mac,scratch --bootstrap 200"
    page = tmp_path / "page.md"
    page.write_text(f"intro\n<!-- controls-table: {flags} -->\n| arm | metric | 99.9 |\n<!-- /controls-table -->\nend\n")
    run = lambda *a: subprocess.run([sys.executable, "scripts/doc_tables.py", str(page), *a], cwd=REPO,
                                    capture_output=True, text=True)
    r = run("--check")
    assert r.returncode == 1 and flags in r.stderr
    assert run().returncode == 0
    text = page.read_text()
    assert text.startswith("intro\n") and text.endswith("<!-- /controls-table -->\nend\n") and "99.9 |" not in text
    assert "| from scratch, MAC's total steps | finetuned, all labels |" in text
    assert run("--check").returncode == 0
