"""The measured controls cells kept in docs/results/controls, and the tables docs/demo.md shows
from them: the published numbers are recomputed from the evidence on every run of the suite."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


LEDGER = REPO / "docs" / "results" / "controls"


def test_the_committed_ledger_is_sound():
    """Every committed record loads, names the code that trained it and the frames it was
    measured on (their content hash), and one instance's cells were all measured on the same
    frames (else the tables would refuse to pool them), whichever build of the cache they read."""
    from train import ledger as L

    recs, problems = L.load_dir(LEDGER)
    assert problems == [] and len(recs) >= 8
    for (inst, seed, arm), r in recs.items():
        assert Path(r["_source"]).name == L.file_name(inst, seed, arm)
        assert r["git"] and r["cache"] and r["frames"] and "evaluate_all" in r["stages"], r["_source"]
    for inst in {k[0] for k in recs}:
        assert len({r["frames"] for k, r in recs.items() if k[0] == inst}) == 1, f"instance {inst}"


def _doc_tables():
    import importlib.util

    spec = importlib.util.spec_from_file_location("doc_tables", REPO / "scripts" / "doc_tables.py")
    dt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dt)
    return dt


def test_the_tables_in_docs_demo_and_the_readme_are_the_ledgers():
    """Each table docs/demo.md and README.md mark as computed from the ledger is exactly what
    `controls.py --table-only --ledger docs/results/controls <its flags>` gives today (the full
    table.md, or its one-row-per-arm summary): the published numbers cannot drift from the
    evidence (scripts/doc_tables.py rewrites them)."""
    dt = _doc_tables()
    found = {page.name: dt.blocks(page.read_text()) for page in dt.PAGES}
    assert len(found["demo.md"]) >= 2, "docs/demo.md marks fewer tables computed from the ledger than it shows"
    assert [k for k, *_ in found["README.md"]] == ["summary"], "README.md shows one summary of the controls"
    for page, got in found.items():
        for kind, flags, shown in got:
            assert ("| MAC (MAC-S) | finetuned, all labels |" if kind == "table" else "| MAC (MAC-S) | ") in shown
            assert shown == dt.render(kind, flags), (f"{page}'s {kind} for '{flags}' differs from the "
                                                     "ledger's: python scripts/doc_tables.py rewrites it")


def test_the_summary_is_the_full_tables_numbers_one_row_per_arm():
    """The summary's cells are the full table's means and intervals, arm by arm; an arm with no
    probe (scratch) shows '-', and MoCo alone's untrained pretext head no pretext figure."""
    dt = _doc_tables()
    flags = "--instances 0 --seeds 0 --arms mac,moco,scratch --bootstrap 300"
    full, summary = dt.table_for(flags), dt.summary_for(flags)
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in summary.splitlines()
            if line.startswith("| ") and not line.startswith("| arm")}
    assert set(rows) == {"MAC (MAC-S)", "MoCo v2 alone", "from scratch, MAC's total steps"}
    for line in full.splitlines():
        parts = line.split(" | ")
        if len(parts) == 7 and parts[1] == "finetuned, all labels" and "[" in parts[2]:
            assert rows[parts[0].strip("| ")][1] == parts[2]
    assert rows["from scratch, MAC's total steps"][3] == "-" and rows["MoCo v2 alone"][5] == "-"
    assert rows["MAC (MAC-S)"][5].endswith("(25.0)") and rows["MAC (MAC-S)"][6] == "1 x 1 |"
    assert "108 videos, chance 16.7 %" in summary


def test_doc_tables_rewrites_a_stale_block_and_check_names_it(tmp_path):
    """A block whose numbers were edited by hand is found by --check (exit 1) and restored."""
    import subprocess
    import sys

    flags = "--instances 0 --seeds 0 --arms mac,scratch --bootstrap 200"
    page = tmp_path / "page.md"
    page.write_text(f"intro\n<!-- controls-table: {flags} -->\n| arm | metric | 99.9 |\n<!-- /controls-table -->\n"
                    f"<!-- controls-summary: {flags} -->\n| arm | 99.9 |\n<!-- /controls-summary -->\nend\n")
    run = lambda *a: subprocess.run([sys.executable, "scripts/doc_tables.py", str(page), *a], cwd=REPO,
                                    capture_output=True, text=True)
    r = run("--check")
    assert r.returncode == 1 and flags in r.stderr
    assert run().returncode == 0
    text = page.read_text()
    assert text.startswith("intro\n") and text.endswith("<!-- /controls-summary -->\nend\n") and "99.9 |" not in text
    assert "| from scratch, MAC's total steps | finetuned, all labels |" in text
    assert "| arm | finetuned, all labels | finetuned, 25 % labels | linear probe |" in text   # the summary
    assert run("--check").returncode == 0
