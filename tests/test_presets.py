"""core/presets.py: preset files and chain.json, overrides (parsing, errors, the train alias,
switches and lists), stage markers (atomic, the skip rule, adopting another run's), the run
signature and its refusal, and the command line run_all.sh calls."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import atomic, presets as P
from core.errors import ToolError, UsageError

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core.presets", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


# ---------------------------------------------------------------------------------------------
# Overrides


def test_overrides_parse_and_normalise_flag_names():
    assert P.parse_overrides(["pretrain.epochs=5", "train.batch_size=16", "evaluate.num-clips=2",
                              "train.lr=0.1=x", "demo.frames="]) == [
        ("pretrain", "epochs", "5"), ("train", "batch-size", "16"), ("evaluate", "num-clips", "2"),
        ("train", "lr", "0.1=x"), ("demo", "frames", "")]
    o = P.parse_override("finetune.freeze_backbone=true")
    assert (o.stage, o.flag, o.value) == ("finetune", "freeze-backbone", "true")
    assert str(o) == "finetune.freeze-backbone=true"


@pytest.mark.parametrize("bad", ["epochs=5", "bogus.epochs=5", "train=5", "Pretrain.epochs=5", ".epochs=5",
                                 "pretrain"])
def test_an_override_with_an_unknown_stage_is_refused_as_run_all_says_it(bad):
    with pytest.raises(UsageError) as e:
        P.parse_override(bad)
    assert str(e.value) == (f"override '{bad}': the stage must be one of demo, extract, pretrain, finetune, "
                            "scratch, linear, evaluate, retrieve, train, chain")


@pytest.mark.parametrize("bad", ["pretrain.=5", "pretrain.epochs"])
def test_an_override_without_a_flag_or_value_is_refused(bad):
    with pytest.raises(UsageError, match=r"must be stage\.flag=value"):
        P.parse_override(bad)


def test_a_caller_may_allow_fewer_stages():
    with pytest.raises(UsageError, match="the stage must be one of pretrain, train$"):
        P.parse_overrides(["pretrain.k=3", "linear.lr=1"], stages=("pretrain", "train"))


def test_train_reaches_pretrain_finetune_and_linear_only():
    assert P.TRAIN_STAGES == ("pretrain", "finetune", "linear")
    over = P.parse_overrides(["train.seed=3", "pretrain.k=4", "linear.lr=1", "evaluate.workers=0"])
    assert P.stage_flags("pretrain", over) == ["--seed", "3", "--k", "4"]
    assert P.stage_flags("finetune", over) == ["--seed", "3"]
    assert P.stage_flags("linear", over) == ["--seed", "3", "--lr", "1"]
    assert P.stage_flags("evaluate", over) == ["--workers", "0"]
    for stage in ("demo", "extract", "retrieve"):
        assert P.stage_flags(stage, over) == []
    assert P.reaches("train", "linear") and not P.reaches("train", "retrieve") and not P.reaches("finetune", "linear")


def test_switches_lists_and_plain_values_become_flags():
    assert P.flag_args("progress", "true") == ["--progress"]
    assert P.flag_args("progress", "false") == ["--no-progress"]
    assert P.flag_args("scales", "32,36,40") == ["--scales", "32", "36", "40"]
    assert P.flag_args("lr", "0.1") == ["--lr", "0.1"]
    assert P.flag_args("frames", "") == ["--frames", ""]
    # the overrides' order is kept (a later one wins in the stage's parser); strings are parsed too
    assert P.stage_flags("pretrain", ["train.scales=32,36", "pretrain.dilate=false", "pretrain.scales=48"]) == [
        "--scales", "32", "36", "--no-dilate", "--scales", "48"]


# ---------------------------------------------------------------------------------------------
# Preset files and chain.json


def _preset(root: Path, name: str, files: dict) -> Path:
    d = root / name
    d.mkdir(parents=True)
    for stage, content in files.items():
        (d / f"{stage}.json").write_text(content if isinstance(content, str) else json.dumps(content))
    return d


CHAIN = {"random-baseline": True, "linear-probe": False, "scratch-baseline": False}


def test_stage_files_and_which_stages_a_preset_has(tmp_path):
    _preset(tmp_path, "p", {"chain": CHAIN, "extract": {}, "pretrain": {}, "finetune": {}, "demo": {}})
    _preset(tmp_path, "ucf101", {"pretrain": {}})
    _preset(tmp_path, "hmdb51", {"finetune": {}})
    assert P.available(tmp_path) == ["hmdb51", "p", "ucf101"]
    assert P.stage_file("p", "extract", tmp_path) == tmp_path / "p" / "extract.json"
    assert P.stage_file("p", "retrieve", tmp_path) == tmp_path / "p" / "retrieve.json"      # exists or not
    assert P.stages("p", tmp_path) == ["demo", "extract", "pretrain", "finetune"]
    # hmdb51 pretrains with ucf101's pretrain.json
    assert P.stage_file("hmdb51", "pretrain", tmp_path) == tmp_path / "ucf101" / "pretrain.json"
    assert P.stages("hmdb51", tmp_path) == ["pretrain", "finetune"]
    assert P.config_flag("p", "demo", tmp_path) == ["--config", str(tmp_path / "p" / "demo.json")]
    assert P.config_flag("p", "evaluate", tmp_path) == []
    assert P.require("p", tmp_path) == tmp_path / "p"
    with pytest.raises(UsageError, match=r"--preset nope: no configs/nope/ \(have: hmdb51, p, ucf101\)"):
        P.require("nope", tmp_path)


def test_the_repositorys_presets_have_what_a_chain_needs():
    for preset in P.available():
        assert P.check_files(preset)[-1] == P.stage_file(preset, "pretrain")
        chain = P.read_chain(P.stage_file(preset, "chain"))
        assert set(chain) == set(P.CHAIN_SWITCHES)
        assert ("linear" in P.stages(preset)) == chain["linear-probe"]


def test_a_missing_stage_file_is_named(tmp_path):
    _preset(tmp_path, "p", {"chain": CHAIN, "extract": {}, "pretrain": {}, "finetune": {}, "evaluate": {}})
    with pytest.raises(P.PresetError) as e:
        P.check_files("p", configs=tmp_path)
    assert str(e.value) == f"the p preset's file {tmp_path / 'p' / 'retrieve.json'} is missing" and e.value.status == 2


@pytest.mark.parametrize("content", [{"random-baseline": True}, {**CHAIN, "extra": True},
                                     {**CHAIN, "random-baseline": 1}, [True, False], "null"])
def test_chain_json_must_hold_exactly_the_switches(tmp_path, content):
    path = tmp_path / "chain.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(P.PresetError) as e:
        P.read_chain(path)
    assert str(e.value) == (f"{path}: must hold exactly the keys random-baseline, linear-probe, scratch-baseline, "
                            "each true or false")
    assert e.value.status == 1                                      # as run_all.sh has always ended


def test_chain_overrides_switch_the_presets_baselines_and_probes():
    """chain.SWITCH=true|false wins over chain.json (defaults < file < flags, for the chain too);
    a switch that does not exist or a value other than true/false is refused, naming it."""
    demo = P.values("demo", ["chain.linear-probe=false", "chain.scratch-baseline=false"])
    assert (demo["RANDOM_BASELINE"], demo["LINEAR_PROBE"], demo["SCRATCH_BASELINE"]) == (1, 0, 0)
    assert demo["SCRATCH_FLAGS"] == ()
    assert P.values("demo", [])["SCRATCH_BASELINE"] == 1 and P.values("demo", [])["SCRATCH_FLAGS"]
    assert P.values("ucf101", ["chain.random-baseline=true"])["RANDOM_BASELINE"] == 1
    assert P.stage_flags("pretrain", ["chain.linear-probe=false"]) == []          # it reaches no stage
    for bad, why in (("chain.probes=false", "the chain's switches are random-baseline, linear-probe, "
                                            "scratch-baseline"), ("chain.linear-probe=0", "true or false")):
        with pytest.raises(UsageError, match=why):
            P.values("demo", [bad])


def test_chain_json_that_is_not_json(tmp_path):
    path = tmp_path / "chain.json"
    path.write_text("{random-baseline: yes")
    with pytest.raises(P.PresetError, match=r"chain\.json: Expecting property name"):
        P.read_chain(path)
    path.write_text(json.dumps(CHAIN))
    assert P.read_chain(path) == CHAIN


# ---------------------------------------------------------------------------------------------
# Markers and the signature


def test_a_marker_is_written_atomically_and_a_marked_stage_is_done(tmp_path, monkeypatch):
    stages = tmp_path / "run" / "stages"
    assert not P.is_done(stages, "pretrain")
    path = P.mark(stages, "pretrain", 12.345, ["pretrain", "--epochs", "1"])
    assert path == stages / "pretrain.done" and P.is_done(stages, "pretrain") and not P.is_done(stages, "finetune")
    rec = json.loads(path.read_text())
    assert rec["stage"] == "pretrain" and rec["wall_seconds"] == 12.35 and rec["finished"]
    assert rec["command"] == ["pretrain", "--epochs", "1"]
    assert sorted(p.name for p in stages.iterdir()) == ["pretrain.done"]          # no temporary file left

    # a write that fails before its rename (a full disk, a kill) leaves no marker and no temporary
    # file: the stage counts as not done and reruns
    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", full_disk)
    with pytest.raises(OSError):
        P.mark(stages, "finetune", 1.0)
    monkeypatch.undo()
    assert not P.is_done(stages, "finetune") and sorted(p.name for p in stages.iterdir()) == ["pretrain.done"]


def test_a_directory_named_like_a_marker_is_not_one(tmp_path):
    (tmp_path / "x.done").mkdir()
    assert not P.is_done(tmp_path, "x")


def test_adopting_another_runs_marker(tmp_path):
    src, dst = tmp_path / "ucf" / "stages", tmp_path / "hmdb" / "stages"
    P.mark(src, "pretrain", 5.0, ["pretrain"])
    assert P.adopt(dst, src, "pretrain")
    assert (dst / "pretrain.done").read_bytes() == (src / "pretrain.done").read_bytes()
    P.mark(dst, "pretrain", 7.0)                                    # this run's own marker is kept
    assert not P.adopt(dst, src, "pretrain")
    assert json.loads((dst / "pretrain.done").read_text())["wall_seconds"] == 7


def test_signature_of_a_run():
    assert P.signature("demo", "ucf101", "data_cache", ["train.seed=1", "pretrain.k=3"]) == \
        "preset=demo pretrain_run=ucf101 cache_dir=data_cache overrides=train.seed=1 pretrain.k=3"
    assert P.signature("demo", "ucf101", "c", []) == "preset=demo pretrain_run=ucf101 cache_dir=c overrides="
    k400 = P.signature("k400-ucf101", "ucf101", "c", [], "kinetics-two")
    assert k400.endswith(" overrides= pretrain_dataset=kinetics-two")



def test_a_signature_reads_back_as_its_fields():
    """report.py reads the preset and the chain.* overrides back from run_args.txt."""
    sig = P.signature("demo", "ucf101", "data_cache", ["train.seed=1", "pretrain.alphas=0.1,0.5"])
    assert P.read_signature(sig + "\n") == {"preset": "demo", "pretrain_run": "ucf101", "cache_dir": "data_cache",
                                            "overrides": ["train.seed=1", "pretrain.alphas=0.1,0.5"]}
    assert P.read_signature(P.signature("demo", "ucf101", "c", []))["overrides"] == []
    k400 = P.read_signature(P.signature("k400-ucf101", "ucf101", "c", ["chain.linear-probe=false"], "kinetics-two"))
    assert k400["overrides"] == ["chain.linear-probe=false"] and k400["pretrain_dataset"] == "kinetics-two"
    assert P.read_signature("") == {}


def test_other_settings_are_refused_once_a_stage_past_the_preflight_finished(tmp_path):
    run = tmp_path / "run"
    old, new = P.signature("demo", "ucf101", "c", []), P.signature("demo", "ucf101", "c", ["finetune.lr=0.5"])
    P.check_signature(run, old)
    assert (run / "run_args.txt").read_text() == old + "\n"
    # data and preflight markers do not commit the run: other settings are taken (and recorded)
    for s in ("data", "preflight", "preflight_kinetics-two"):
        P.mark(run / "stages", s, 1.0)
    assert not P.started(run / "stages")
    P.check_signature(run, new)
    assert (run / "run_args.txt").read_text() == new + "\n"
    P.check_signature(run, old)
    P.mark(run / "stages", "extract", 1.0)
    assert P.started(run / "stages")
    P.check_signature(run, old)                                      # the same settings: resumed
    with pytest.raises(ToolError) as e:
        P.check_signature(run, new)
    assert str(e.value) == (f"{run} was started with other settings:\n  {old}\nnow:\n  {new}\n"
                            "Resume with the original settings, or start a new run with --run-id NEW_ID.")
    assert (run / "run_args.txt").read_text() == old + "\n"           # unchanged by the refusal
    # a run_args.txt as bash's echo wrote it (one newline) is the same signature
    (run / "run_args.txt").write_text(old + "\n")
    P.check_signature(run, old)


# ---------------------------------------------------------------------------------------------
# The command line run_all.sh calls


def test_cli_overrides_and_flags():
    r = cli("check-overrides", "--", "pretrain.epochs=1", "train.seed=2")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""
    r = cli("check-overrides", "--", "pretrain.epochs=1", "epochs=2")
    assert r.returncode == 2 and r.stderr == ("[run_all] error: override 'epochs=2': the stage must be one of demo, "
                                              "extract, pretrain, finetune, scratch, linear, evaluate, retrieve, "
                                              "train, chain\n")
    r = cli("flags", "linear", "--", "train.scales=32,36", "linear.freeze_backbone=true", "train.progress=false",
            "finetune.lr=1")
    assert r.returncode == 0 and r.stdout.splitlines() == ["--scales", "32", "36", "--freeze-backbone",
                                                           "--no-progress"]
    r = cli("flags", "evaluate", "--")
    assert r.returncode == 0 and r.stdout == ""


def test_cli_markers_and_signature(tmp_path):
    stages = tmp_path / "run" / "stages"
    r = cli("done", "--stages-dir", str(stages), "extract")
    assert r.returncode == 1 and r.stdout == ""
    r = cli("mark", "--stages-dir", str(stages), "--started", "1", "extract", "--", "extract", "demo", "--x", "1")
    assert r.returncode == 0
    rec = json.loads((stages / "extract.done").read_text())
    assert rec["command"] == ["extract", "demo", "--x", "1"] and rec["wall_seconds"] > 1e9
    r = cli("done", "--stages-dir", str(stages), "extract")
    assert r.returncode == 0 and r.stdout.strip() == str(stages / "extract.done")
    r = cli("adopt", "--stages-dir", str(tmp_path / "b" / "stages"), "--from", str(stages), "extract")
    assert r.returncode == 0 and (tmp_path / "b" / "stages" / "extract.done").is_file()

    sig = ["signature", "--run-dir", str(tmp_path / "run"), "--preset", "demo", "--pretrain-run", "ucf101",
           "--cache-dir", "c", "--"]
    assert cli(*sig, "train.seed=1").returncode == 0
    assert (tmp_path / "run" / "run_args.txt").read_text() == \
        "preset=demo pretrain_run=ucf101 cache_dir=c overrides=train.seed=1\n"
    r = cli(*sig, "train.seed=2")
    assert r.returncode == 2
    assert r.stderr.startswith(f"[run_all] error: {tmp_path / 'run'} was started with other settings:")


def test_cli_values_of_a_preset(tmp_path):
    r = cli("values", "--preset", "demo", "--", "pretrain.lambda=10", "train.strides=1,2", "finetune.lr=5")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "RANDOM_BASELINE=1" in out and "LINEAR_PROBE=1" in out and "LAMBDA=10" in out and "M=0.5" in out
    # the demo's pretraining computes each clip's masks (--mask-source clip): no mask set to store
    assert "MASK_SET_STRIDES=()" in out and "PT_CONFIG=configs/demo/pretrain.json" in out and "DEMO_CONFIG=()" in out
    assert "BACKBONE=r2plus1d_10_w32" in out
    r = cli("values", "--preset", "demo", "--", "pretrain.lambda=10", "train.strides=1,2", "pretrain.mask-source=cache")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "MASK_SET_STRIDES=(1 2)" in out
    env = subprocess.run(["bash", "-c", 'eval "$1"; echo "$LAMBDA ${MASK_SET_STRIDES[*]} $PT_CONFIG ${#DEMO_CONFIG[@]}"',
                          "-", out], capture_output=True, text=True)
    assert env.stdout == "10 1 2 configs/demo/pretrain.json 0\n"
    r = cli("values", "--preset", "hmdb51")
    assert r.returncode == 0 and "PT_CONFIG=configs/ucf101/pretrain.json" in r.stdout and "LINEAR_PROBE=0" in r.stdout
    r = cli("values", "--preset", "demo-large")
    assert "DEMO_CONFIG=(--config configs/demo-large/demo.json)" in r.stdout
    # a refused value of the pretraining: pretrain.py's own line, status 2
    r = cli("values", "--preset", "demo", "--", "train.k=1")
    assert r.returncode == 2 and "pretrain.py: error: --k 1: must be an integer >= 2" in r.stderr
    # a preset's problems: run_all.sh's lines and statuses
    _preset(tmp_path, "p", {"chain": {"random-baseline": True}})
    r = cli("values", "--preset", "p", "--configs", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr == f"[run_all] error: the p preset's file {tmp_path / 'p' / 'extract.json'} is missing\n"
    for s in ("extract", "finetune", "evaluate", "retrieve", "pretrain"):
        (tmp_path / "p" / f"{s}.json").write_text("{}")
    r = cli("values", "--preset", "p", "--configs", str(tmp_path))
    assert r.returncode == 1 and "must hold exactly the keys random-baseline, linear-probe" in r.stderr
    (tmp_path / "p" / "chain.json").write_text(json.dumps({"random-baseline": False, "linear-probe": True,
                                                           "scratch-baseline": False}))
    r = cli("values", "--preset", "p", "--configs", str(tmp_path))
    assert r.returncode == 2 and f"the p preset's file {tmp_path / 'p' / 'linear.json'} is missing" in r.stderr


def test_importing_presets_imports_neither_torch_nor_a_stage():
    code = ("import sys, core.presets; bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', "
            "'train', 'preprocess')]; print(bad)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


def test_no_argparse_outside_core_flags_in_the_callers():
    for path in ("core/presets.py", "train/sweep.py"):
        text = (REPO / path).read_text()
        assert "import argparse" not in text and "add_argument" not in text, path
    text = (REPO / "run_all.sh").read_text()
    assert "$PY - " not in text and "<<'EOF'" not in text                 # no embedded Python left
