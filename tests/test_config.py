"""Config files (``--config FILE``) against flags: the scripts' defaults < the file < the command
line, for every script a stage of run_all.sh runs; a bad file, key or value is refused before any
work (status 2, one line naming the file and the key, nothing created); every preset file under
configs/ loads and validates through its script's real parser."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from core import errors as cli
from core import flags
from train.finetune import FinetuneConfig
from train.pretrain import PretrainConfig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
PRESETS = ("demo", "demo-large", "ucf101", "hmdb51", "k400-ucf101")


def write(path: Path, obj) -> Path:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def one_line_error(capsys, prog: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: ") and "Traceback" not in err, err
    return err.strip()


def argv_of(obj: dict) -> list[str]:
    """The command-line flags that mean the same as a config file's object."""
    out = []
    for k, v in obj.items():
        if isinstance(v, bool):
            out.append(f"--{k}" if v else f"--no-{k}")
        else:
            out += [f"--{k}", *map(str, v if isinstance(v, list) else [v])]
    return out


# ---------------------------------------------------------------------------------------------
# pretrain / finetune: core.flags.parse


def test_pretrain_file_sets_values_flags_override_defaults_fill(tmp_path):
    f = write(tmp_path / "p.json", {"lambda": 10, "frames": 8, "crop": 48, "scales": [48, 54], "milestones": [],
                                    "dilate": False, "lr": 1, "batch-size": 4, "optimizer": "adamw"})
    cfg = flags.parse(PretrainConfig, ["--config", str(f)])
    assert (cfg.lam, cfg.frames, cfg.crop, cfg.scales, cfg.milestones, cfg.dilate) == (10, 8, 48, (48, 54), (), False)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.batch_size == 4 and cfg.optimizer == "adamw"
    default = PretrainConfig()
    assert (cfg.k, cfg.m, cfg.epochs, cfg.strides) == (default.k, default.m, default.epochs, default.strides)
    # the command line wins over the file, wherever it stands relative to --config
    cfg = flags.parse(PretrainConfig, ["--frames", "4", "--config", str(f), "--dilate", "--milestones", "3"])
    assert cfg.frames == 4 and cfg.dilate is True and cfg.milestones == (3,) and cfg.lam == 10 and cfg.crop == 48
    # a file means exactly what the same flags mean
    obj = json.loads(f.read_text())
    assert flags.parse(PretrainConfig, ["--config", str(f)]) == flags.parse(PretrainConfig, argv_of(obj))


def test_finetune_file_and_flags(tmp_path):
    f = write(tmp_path / "f.json", {"init": "random", "freeze-backbone": True, "label-fraction": 0.5,
                                    "dropout": 0, "epochs": 3})
    cfg = flags.parse(FinetuneConfig, ["--config", str(f), "--epochs", "5"])
    assert cfg.init == "random" and cfg.freeze_backbone is True and cfg.label_fraction == 0.5
    assert cfg.dropout == 0.0 and cfg.epochs == 5 and cfg.lr == FinetuneConfig().lr
    assert flags.parse(FinetuneConfig, ["--config", str(f), "--no-freeze-backbone"]).freeze_backbone is False


def test_a_flag_may_replace_a_bad_file_value_but_a_bad_flag_is_named_as_a_flag(tmp_path, capsys):
    """Ranges are checked on the resolved values: a file value the command line replaces never
    counts; a bad value given on the command line is reported as the flag, as without a file."""
    f = write(tmp_path / "p.json", {"lambda": 300})
    assert flags.parse(PretrainConfig, ["--config", str(f), "--lambda", "20"]).lam == 20
    with pytest.raises(SystemExit) as e:
        flags.parse(PretrainConfig, ["--config", str(write(tmp_path / "q.json", {"m": 0.1})), "--k", "1"],
                       prog="pretrain.py")
    assert e.value.code == 2
    err = one_line_error(capsys, "pretrain.py")
    assert "--k 1: must be an integer >= 2" in err and "q.json" not in err


BAD_TRAINING_FILES = [
    # (tool, file content, the key the line must name (None: the file alone), what it must say)
    ("pretrain", {"zzz": 1}, "zzz", "unknown key"),
    ("pretrain", {"batch_size": 4}, "batch_size", 'write it "batch-size"'),
    ("pretrain", {"--batch-size": 4}, "--batch-size", 'did you mean "batch-size"'),
    ("pretrain", {"lam": 10}, "lam", 'write it "lambda"'),
    ("pretrain", {"lambda": "30"}, "lambda", '"30": must be an integer'),
    ("pretrain", {"lambda": 30.5}, "lambda", "30.5: must be an integer"),
    ("pretrain", {"lr": True}, "lr", "true: must be a number"),
    ("pretrain", {"scales": 112}, "scales", "must be a list of integers"),
    ("pretrain", {"frames": [16]}, "frames", "must be an integer"),
    ("pretrain", {"dilate": "false"}, "dilate", "must be true or false"),
    ("pretrain", {"optimizer": "adam"}, "optimizer", "must be one of sgd, adamw"),
    ("pretrain", {"lambda": 300}, "lambda", "300: must be an integer in [0, 255]"),
    ("pretrain", {"k": 1}, "k", "1: must be an integer >= 2"),
    ("pretrain", {"strides": [0, 2]}, "strides", "must be one or more values, each an integer >= 1"),
    ("pretrain", {"crop": 64, "scales": [16]}, "crop", "64: must be <= the smallest of --scales (16)"),
    ("pretrain", {"backbone": "resnet50"}, "backbone", "unknown backbone"),
    ("pretrain", '{"k": 2,}', None, "not valid JSON"),
    ("pretrain", '{"k": 2, "k": 3}', None, 'the key "k" appears twice'),
    ("pretrain", "[1, 2]", None, "not a JSON object"),
    ("finetune", {"init": "random", "split": 4}, "split", "4: must be an integer in [1, 3]"),
    ("finetune", {"init": "random", "label-fraction": 0}, "label-fraction", "must be a number in (0, 1]"),
    ("finetune", {"init": "random", "freeze-backbone": 1}, "freeze-backbone", "must be true or false"),
]


@pytest.mark.parametrize("tool,content,key,expected", BAD_TRAINING_FILES,
                         ids=[f"{t}-{json.dumps(c) if not isinstance(c, str) else c}" for t, c, _, _ in BAD_TRAINING_FILES])
def test_bad_training_files_are_refused_before_any_work(tool, content, key, expected, tmp_path, capsys):
    from train.finetune import main as finetune_main
    from train.pretrain import main as pretrain_main

    f = write(tmp_path / "bad.json", content)
    argv = ["--config", str(f), "--cache-dir", str(tmp_path / "cache"), "--run-dir", str(tmp_path / "run")]
    capsys.readouterr()
    status = cli.run(pretrain_main if tool == "pretrain" else finetune_main, f"{tool}.py", argv)
    err = one_line_error(capsys, f"{tool}.py")
    assert status == cli.EXIT_USAGE
    assert str(f) in err and expected in err, err
    if key is not None:
        assert f'"{key}"' in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_missing_config_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        flags.parse(PretrainConfig, ["--config", str(tmp_path / "none.json")], prog="pretrain.py")
    assert e.value.code == 2
    assert one_line_error(capsys, "pretrain.py").endswith(f"--config {tmp_path / 'none.json'}: no such file")


# ---------------------------------------------------------------------------------------------
# evaluate / retrieve (parse_args)


def test_evaluate_file_flags_defaults(tmp_path):
    from train.evaluate import parse_args

    ck = tmp_path / "last.pt"
    ck.write_bytes(b"")
    f = write(tmp_path / "e.json", {"checkpoint": str(ck), "num-clips": 3, "frames": 8, "split": None,
                                    "part": "train", "workers": 0})
    a = parse_args(["--config", str(f)])                   # the required --checkpoint comes from the file
    assert (a.checkpoint, a.num_clips, a.frames, a.split, a.part, a.workers) == (ck, 3, 8, None, "train", 0)
    assert a.batch_size == 4 and a.crop is None and a.config == str(f)
    a = parse_args(["--config", str(f), "--num-clips", "5", "--part", "test"])
    assert a.num_clips == 5 and a.part == "test" and a.frames == 8
    assert parse_args(["--checkpoint", str(ck)]).config is None


@pytest.mark.parametrize("content,key,expected", [
    ({"num-clips": 0}, "num-clips", "0: must be an integer >= 1"),
    ({"frames": "8"}, "frames", '"8": must be an integer or null (the default)'),
    ({"T": 8}, "T", "unknown key"),
    ({"part": "val"}, "part", "must be one of test, train, all"),
    ({"crop": 200, "short-side": 128}, "crop", "200: must be <= --short-side (128)"),
    ({"checkpoint": None}, "checkpoint", "must be a string"),
])
def test_evaluate_bad_files(content, key, expected, tmp_path, capsys):
    from train.evaluate import main

    ck = tmp_path / "some.pt"
    ck.write_bytes(b"")
    f = write(tmp_path / "bad.json", content)
    capsys.readouterr()
    status = cli.run(main, "evaluate.py", ["--config", str(f), "--checkpoint", str(ck), "--out-dir", str(tmp_path / "out")])
    err = one_line_error(capsys, "evaluate.py")
    assert status == 2 and str(f) in err and f'"{key}"' in err and expected in err, err
    assert not (tmp_path / "out").exists()


def test_retrieve_file_flags_defaults(tmp_path, capsys):
    from train.retrieve import DEFAULT_KS, main, parse_args

    f = write(tmp_path / "r.json", {"init": "random", "backbone": "r3d_18", "ks": [1, 5], "save-features": True,
                                    "seed": 3})
    a = parse_args(["--config", str(f)])
    assert (a.init, a.backbone, a.ks, a.save_features, a.seed) == ("random", "r3d_18", [1, 5], True, 3)
    assert a.num_clips == 10 and a.checkpoint is None
    a = parse_args(["--config", str(f), "--ks", "1", "--seed", "0"])
    assert a.ks == [1] and a.seed == 0 and a.backbone == "r3d_18"
    assert parse_args(["--config", str(write(tmp_path / "s.json", {"save-features": False})),
                       "--init", "random"]).save_features is False
    assert parse_args(["--init", "random"]).ks == list(DEFAULT_KS)
    for content, key, expected in [({"ks": 5}, "ks", "must be a non-empty list of integers"),
                                   ({"ks": []}, "ks", "must be a non-empty list of integers"),
                                   ({"ks": [0, 5]}, "ks", "must be one or more values"),
                                   ({"init": "imagenet"}, "init", "must be one of checkpoint, random"),
                                   ({"config-from": str(tmp_path / "no.pt")}, "config-from", "no such file")]:
        bad = write(tmp_path / "bad.json", content)
        capsys.readouterr()
        status = cli.run(main, "retrieve.py", ["--config", str(bad), "--init", "random", "--out-dir", str(tmp_path / "o")])
        err = one_line_error(capsys, "retrieve.py")
        assert status == 2 and str(bad) in err and f'"{key}"' in err and expected in err, err
        assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# extract_masks / make_demo


def test_extract_masks_file_flags_defaults(tmp_path, capsys):
    from preprocess.extract_masks import main, parse_args

    f = write(tmp_path / "x.json", {"lambda": 10, "m": 1, "strides": [1, 2], "workers": 1, "force": True,
                                    "cache-dir": str(tmp_path / "c"), "dataset": "demo"})
    a = parse_args(["--config", str(f)])
    assert (a.lam, a.m, a.strides, a.workers, a.force, a.cache_dir, a.dataset) == \
        (10, 1.0, [1, 2], 1, True, tmp_path / "c", "demo")
    assert a.short_side == 128 and a.timeout is None
    a = parse_args(["--config", str(f), "--strides", "3", "--lambda", "60"])
    assert a.strides == [3] and a.lam == 60 and a.m == 1.0
    for content, key, expected in [({"strides": [2, 2]}, "strides", "must be distinct"),
                                   ({"lambda": -5}, "lambda", "-5: must be an integer in [0, 255]"),
                                   ({"dataset": "sports1m"}, "dataset", "must be one of ucf101, hmdb51, folder, demo, kinetics"),
                                   ({"timeout": "10"}, "timeout", "must be a number or null"),
                                   ({"lam": 30}, "lam", 'write it "lambda"')]:
        bad = write(tmp_path / "bad.json", content)
        capsys.readouterr()
        status = cli.run(main, "extract_masks.py", ["--config", str(bad), "--cache-dir", str(tmp_path / "fresh")])
        err = one_line_error(capsys, "extract_masks.py")
        assert status == 2 and str(bad) in err and f'"{key}"' in err and expected in err, err
        assert not (tmp_path / "fresh").exists()


def test_make_demo_file_flags_defaults(tmp_path, capsys):
    from preprocess.make_demo import DEFAULTS, main, parse_args

    f = write(tmp_path / "d.json", {"data-root": str(tmp_path / "demo"), "groups": 4, "frames": 16})
    a = parse_args(["--config", str(f), "--groups", "5"])
    assert (a.root, a.groups, a.frames, a.clips, a.seed) == (str(tmp_path / "demo"), 5, 16, DEFAULTS["clips"], 0)
    assert parse_args(["--config", str(f), "--root", str(tmp_path / "x")]).root == str(tmp_path / "x")  # the old name
    for content, key, expected in [({"groups": 2}, "groups", "2: must be an integer in [3, 99]"),
                                   ({"root": "x"}, "root", 'write it "data-root"'),
                                   ({"frames": 4.0}, "frames", "must be an integer")]:
        bad = write(tmp_path / "bad.json", content)
        capsys.readouterr()
        status = cli.run(main, "make_demo.py", ["--config", str(bad), "--data-root", str(tmp_path / "demo")])
        err = one_line_error(capsys, "make_demo.py")
        assert status == 2 and str(bad) in err and f'"{key}"' in err and expected in err, err
        assert not (tmp_path / "demo").exists()


def test_help_shows_the_config_flag(capsys):
    from train.evaluate import parse_args

    with pytest.raises(SystemExit) as e:
        parse_args(["--help"])
    assert e.value.code == 0 and "--config FILE" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        flags.parse(PretrainConfig, ["--help"])
    assert "--config FILE" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# The preset files


def load_preset_file(path: Path, tmp_path: Path):
    """Parse one file of configs/ with its stage's script, as run_all.sh runs it (the flags the
    chain adds itself are given where the script needs them)."""
    stage = path.stem
    if stage == "pretrain":
        return flags.parse(PretrainConfig, ["--config", str(path)])
    if stage in ("finetune", "linear", "scratch"):      # scratch.json: the scratch baseline's finetune.py flags
        return flags.parse(FinetuneConfig, ["--config", str(path), "--init", "random"])
    if stage == "evaluate":
        from train.evaluate import parse_args

        (tmp_path / "last.pt").write_bytes(b"")
        return parse_args(["--config", str(path), "--checkpoint", str(tmp_path / "last.pt")])
    if stage == "retrieve":
        from train.retrieve import parse_args

        return parse_args(["--config", str(path), "--init", "random"])
    if stage == "extract":
        from preprocess.extract_masks import parse_args

        return parse_args(["--config", str(path)])
    if stage == "demo":
        from preprocess.make_demo import parse_args

        return parse_args(["--config", str(path), "--data-root", str(tmp_path / "demo")])
    if stage == "chain":
        chain = json.loads(path.read_text())
        assert set(chain) == {"random-baseline", "linear-probe", "scratch-baseline"}
        assert all(isinstance(v, bool) for v in chain.values())
        return chain
    raise AssertionError(f"{path}: no stage of run_all.sh is called {stage!r}")


PRESET_FILES = sorted(p for p in CONFIGS.rglob("*") if p.is_file() and p.name != "README.md")


@pytest.mark.parametrize("path", PRESET_FILES, ids=[str(p.relative_to(CONFIGS)) for p in PRESET_FILES])
def test_every_preset_file_loads_through_its_script(path, tmp_path):
    assert path.suffix == ".json" and path.parent.parent == CONFIGS and path.parent.name in PRESETS
    load_preset_file(path, tmp_path)


def test_every_preset_has_its_stage_files(tmp_path):
    assert {p.name for p in CONFIGS.iterdir() if p.is_dir()} == set(PRESETS)
    for preset in PRESETS:
        d = CONFIGS / preset
        chain = load_preset_file(d / "chain.json", tmp_path)
        for stage in ("extract", "finetune", "evaluate", "retrieve"):
            assert (d / f"{stage}.json").is_file(), (preset, stage)
        assert (d / "pretrain.json").is_file() == (preset != "hmdb51")   # hmdb51: the ucf101 pretraining
        assert (d / "linear.json").is_file() == chain["linear-probe"]
        assert not (d / "demo.json").exists() or preset.startswith("demo")
    # the paper's presets: the paper's recipe; the demo's: the CPU-sized one
    pt = flags.parse(PretrainConfig, ["--config", str(CONFIGS / "ucf101" / "pretrain.json")])
    assert (pt.method, pt.n, pt.k, pt.lam, pt.m, pt.backbone, pt.epochs) == ("mac-sc", 2, 4, 30, 0.5, "r2plus1d_18", 300)
    demo = flags.parse(PretrainConfig, ["--config", str(CONFIGS / "demo" / "pretrain.json")])
    assert (demo.method, demo.k, demo.frames, demo.crop, demo.backbone) == ("mac-s", 2, 8, 48, "r2plus1d_10_w32")
    readme = (CONFIGS / "README.md").read_text()
    assert all(f"## `{p}`" in readme for p in PRESETS)


def test_run_all_refuses_a_bad_override_of_a_preset_file_before_any_work(tmp_path):
    """run_all.sh resolves the pretraining's config (its file, then the overrides) with the
    script's own parser before anything runs: a bad override ends it with status 2."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", str(REPO / "run_all.sh"), "demo", "--runs-root", str(tmp_path / "runs"),
                        "--data-root", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache"), "train.k=1"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "pretrain.py: error: --k 1: must be an integer >= 2" in r.stderr, r.stderr
    assert not any((tmp_path / d).exists() for d in ("runs", "data", "cache"))
