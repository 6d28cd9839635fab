"""Presets, overrides and stage markers: what run_all.sh and train/sweep.py share about running a
chain of stages. The one implementation of each; run_all.sh calls it through the small command
line at the bottom (``python -m core.presets SUBCOMMAND ...``), sweep.py imports it.

Owns:
- preset files: ``configs/<preset>/<stage>.json``, one per stage, read by that stage's script
  through its own ``--config``; which stage files a preset has, the ones the chain needs (a
  preset without its own pretraining file pretrains with another's: hmdb51 with ucf101's), and
  ``chain.json``, the chain's own switches (``random-baseline``, ``linear-probe``, ``scratch-baseline``, each true or
  false, nothing else; ``chain.linear-probe=false`` overrides one);
- overrides ``stage.flag=value``: the stages they may name (``train.`` = pretrain + finetune +
  linear), their checking (one line naming the bad one) and their conversion into a stage's
  command-line flags (``true`` -> ``--x``, ``false`` -> ``--no-x``, ``a,b,c`` -> ``--x a b c``,
  ``_`` in a flag name read as ``-``);
- stage markers ``<run>/stages/<stage>.done``: written atomically once a stage succeeded (its
  wall time, command and end time, JSON), a stage with a marker is skipped on a rerun; the
  signature a run directory was started with (``run_args.txt``: preset and overrides) and the
  refusal of a different one once a stage past the data and preflight stages has finished.

Must not import torch, numpy or either stage (``preprocess``, ``train``) at import time: run_all.sh
starts it for every stage. Only the ``values`` subcommand reads the pretraining's config, importing
train/pretrain.py inside the subcommand.

Command line (run_all.sh's; errors are one line ``[run_all] error: ...`` on stderr)::

    python -m core.presets check-overrides -- OVERRIDE...      # status 2 on the first bad one
    python -m core.presets flags STAGE -- OVERRIDE...          # the stage's flags, one per line
    python -m core.presets values --preset P -- OVERRIDE...    # bash assignments, for eval
    python -m core.presets done --stages-dir D STAGE           # status 0 (prints the marker) or 1
    python -m core.presets mark --stages-dir D --started T0 STAGE -- COMMAND...
    python -m core.presets adopt --stages-dir D --from OTHER STAGE
    python -m core.presets signature --run-dir D --preset P --pretrain-run R --cache-dir C -- OVERRIDE...
"""
from __future__ import annotations

import datetime
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

from core import atomic
from core.errors import EXIT_FAILED_ITEMS, EXIT_USAGE, ToolError, UsageError, exit_with, tool_error_message
from core.flags import Flags, flag, parse, parse_commands

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# the stages an override may name, in run_all.sh's order, and what `train.` reaches
# (chain: the chain's own switches, chain.json's keys, e.g. chain.linear-probe=false)
OVERRIDE_STAGES = ("demo", "extract", "pretrain", "finetune", "scratch", "linear", "evaluate", "retrieve", "train",
                   "chain")
TRAIN_STAGES = ("pretrain", "finetune", "linear")
STAGE_NAMES = tuple(s for s in OVERRIDE_STAGES if s not in ("train", "chain"))

# chain.json: the chain's switches; the stage files every chain needs (linear.json too when the
# linear probes run); presets that pretrain with another preset's pretrain.json
CHAIN_SWITCHES = ("random-baseline", "linear-probe", "scratch-baseline")
CHAIN_FILES = ("chain", "extract", "finetune", "evaluate", "retrieve", "pretrain")
PRETRAIN_FROM = {"hmdb51": "ucf101"}          # hmdb51 pretrains on UCF101 with the ucf101 recipe

# markers: finished before the run's settings matter (data generation and the dataset checks), so
# fixing a wrong --data-root after a failed preflight is no change of settings
MARKER_SUFFIX = ".done"
SIGNATURE_FILE = "run_args.txt"
TAG = "[run_all]"


class PresetError(ToolError):
    """A preset that cannot run: a missing stage file, a malformed chain.json. ``status`` is the
    exit status run_all.sh has always ended with for it."""

    def __init__(self, message: str, status: int = EXIT_USAGE):
        super().__init__(message)
        self.status = status


class SettingsChanged(ToolError):
    """A run directory started with other settings (preset, overrides): never mixed."""


# ---------------------------------------------------------------------------------------------
# Preset files
# ---------------------------------------------------------------------------------------------

def available(configs: Path = CONFIGS) -> list[str]:
    """The presets: the folders of configs/."""
    return sorted(p.name for p in Path(configs).iterdir() if p.is_dir()) if Path(configs).is_dir() else []


def require(preset: str, configs: Path = CONFIGS, flag_name: str = "--preset") -> Path:
    """configs/<preset>/, or a UsageError naming the presets there are."""
    d = Path(configs) / preset
    if not d.is_dir():
        raise UsageError(flag_name, preset, f"no configs/{preset}/ (have: {', '.join(available(configs))})")
    return d


def stage_file(preset: str, stage: str, configs: Path = CONFIGS) -> Path:
    """configs/<preset>/<stage>.json, whether it exists or not; a preset of PRETRAIN_FROM
    pretrains with that preset's pretrain.json."""
    if stage == "pretrain":
        preset = PRETRAIN_FROM.get(preset, preset)
    return Path(configs) / preset / f"{stage}.json"


def stages(preset: str, configs: Path = CONFIGS) -> list[str]:
    """The stages the preset has a file for (chain.json is the chain's, not a stage's)."""
    d = Path(configs) / preset
    have = {p.stem for p in d.glob("*.json")} - {"chain"} if d.is_dir() else set()
    if (stage_file(preset, "pretrain", configs)).is_file():
        have.add("pretrain")
    return [s for s in STAGE_NAMES if s in have] + sorted(have - set(STAGE_NAMES))


def config_flag(preset: str, stage: str, configs: Path = CONFIGS) -> list[str]:
    """``["--config", FILE]`` when the preset has a file for the stage, else ``[]``."""
    path = stage_file(preset, stage, configs)
    return ["--config", str(path)] if path.is_file() else []


def check_files(preset: str, needed: Iterable[str] = CHAIN_FILES, configs: Path = CONFIGS) -> list[Path]:
    """The stage files a chain of the preset needs, each of which must exist."""
    paths = [stage_file(preset, s, configs) for s in needed]
    for p in paths:
        if not p.is_file():
            raise PresetError(f"the {preset} preset's file {p} is missing")
    return paths


def read_chain(path: str | os.PathLike) -> dict[str, bool]:
    """chain.json: exactly the keys of CHAIN_SWITCHES, each true or false."""
    try:
        chain = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise PresetError(f"{path}: {e}", EXIT_FAILED_ITEMS) from None
    if not isinstance(chain, dict) or set(chain) != set(CHAIN_SWITCHES) or \
            not all(isinstance(v, bool) for v in chain.values()):
        raise PresetError(f"{path}: must hold exactly the keys {', '.join(CHAIN_SWITCHES)}, each true or false",
                          EXIT_FAILED_ITEMS)
    return chain


# ---------------------------------------------------------------------------------------------
# Overrides: stage.flag=value
# ---------------------------------------------------------------------------------------------

class Override(NamedTuple):
    stage: str          # one of OVERRIDE_STAGES (train: every training stage)
    flag: str           # the long flag name without dashes, "_" written "-"
    value: str          # as typed: true / false / a,b,c / anything

    def __str__(self) -> str:
        return f"{self.stage}.{self.flag}={self.value}"


def parse_override(item: str, stages: Sequence[str] = OVERRIDE_STAGES) -> Override:
    """"pretrain.epochs=5" -> Override("pretrain", "epochs", "5"); anything else a UsageError
    (``override 'epochs=5': the stage must be one of demo, extract, ...``)."""
    key, sep, value = item.partition("=")
    stage, dot, name = key.partition(".")
    if not dot or stage not in stages:
        raise UsageError("override", f"'{item}'", f"the stage must be one of {', '.join(stages)}")
    if not sep or not name:
        raise UsageError("override", f"'{item}'", "must be stage.flag=value (e.g. pretrain.epochs=5)")
    return Override(stage, name.replace("_", "-"), value)


def parse_overrides(items: Iterable[str], stages: Sequence[str] = OVERRIDE_STAGES) -> list[Override]:
    return [parse_override(i, stages) for i in items]


def reaches(target: str, stage: str) -> bool:
    """Whether an override or setting for ``target`` (a stage, or train) applies to ``stage``."""
    return target == stage or (target == "train" and stage in TRAIN_STAGES)


def flag_args(name: str, value: str) -> list[str]:
    """One flag as the scripts take it: a switch for true/false, several values for a,b,c."""
    if value == "true":
        return [f"--{name}"]
    if value == "false":
        return [f"--no-{name}"]
    return [f"--{name}", *value.split(",")]


def stage_flags(stage: str, overrides: Iterable[Override | str]) -> list[str]:
    """The command-line flags the overrides give ``stage``, in their order (after the preset
    file and the chain's own flags on the stage's command line, so they win)."""
    out: list[str] = []
    for o in overrides:
        o = o if isinstance(o, Override) else parse_override(o)
        if reaches(o.stage, stage):
            out += flag_args(o.flag, o.value)
    return out


# ---------------------------------------------------------------------------------------------
# Stage markers and the run's signature
# ---------------------------------------------------------------------------------------------

def marker(stages_dir: str | os.PathLike, stage: str) -> Path:
    return Path(stages_dir) / f"{stage}{MARKER_SUFFIX}"


def is_done(stages_dir: str | os.PathLike, stage: str) -> bool:
    """A stage with a marker finished: it is skipped (and an interrupted one, without a marker,
    is rerun and resumes from its own checkpoint)."""
    return marker(stages_dir, stage).is_file()


def mark(stages_dir: str | os.PathLike, stage: str, wall_seconds: float, command: Sequence[str] = ()) -> Path:
    """Write the stage's marker atomically (a crash leaves no marker or a whole one)."""
    rec = {"stage": stage, "wall_seconds": round(float(wall_seconds), 2), "command": list(command),
           "finished": datetime.datetime.now().isoformat(timespec="seconds")}
    return atomic.write_text(marker(stages_dir, stage), json.dumps(rec) + "\n")


def adopt(stages_dir: str | os.PathLike, source_dir: str | os.PathLike, stage: str) -> bool:
    """Take another run's marker of ``stage`` (a reused pretraining) unless this run has one."""
    if is_done(stages_dir, stage):
        return False
    atomic.write_bytes(marker(stages_dir, stage), marker(source_dir, stage).read_bytes())
    return True


def counts_as_started(stage: str) -> bool:
    """Stages whose marker commits a run to its settings: all but data and preflight*."""
    return stage != "data" and not stage.startswith("preflight")


def started(stages_dir: str | os.PathLike) -> bool:
    d = Path(stages_dir)
    return d.is_dir() and any(counts_as_started(p.name[:-len(MARKER_SUFFIX)]) for p in d.glob(f"*{MARKER_SUFFIX}"))


def signature(preset: str, pretrain_run: str, cache_dir: str, overrides: Sequence[str],
              pretrain_dataset: str | None = None) -> str:
    """What a run's results depend on (not where the videos lie), as run_args.txt holds it."""
    sig = f"preset={preset} pretrain_run={pretrain_run} cache_dir={cache_dir} overrides={' '.join(overrides)}"
    return sig + (f" pretrain_dataset={pretrain_dataset}" if pretrain_dataset else "")


def read_signature(sig: str) -> dict:
    """signature's inverse: {"preset", "pretrain_run", "cache_dir", "overrides": [...],
    "pretrain_dataset"?}; the fields a signature lacks are absent. Overrides never hold a space
    (stage.flag=value, lists comma-separated), so every space-separated word after ``overrides=``
    is one, up to the ``pretrain_dataset=`` that may close the line."""
    out: dict = {}
    head, sep, tail = sig.strip().partition(" overrides=")
    for word in head.split():
        key, _, value = word.partition("=")
        out[key] = value
    if sep:
        words = tail.split()
        if words and words[-1].startswith("pretrain_dataset="):
            out["pretrain_dataset"] = words.pop().partition("=")[2]
        out["overrides"] = words
    return out


def check_signature(run_dir: str | os.PathLike, sig: str) -> None:
    """Refuse a run directory started with other settings (once it has finished a stage past the
    preflight), else record ``sig`` as its settings."""
    run_dir = Path(run_dir)
    path = run_dir / SIGNATURE_FILE
    if started(run_dir / "stages") and path.is_file():
        old = path.read_text().rstrip("\n")
        if old != sig:
            raise SettingsChanged(f"{run_dir} was started with other settings:\n  {old}\nnow:\n  {sig}\n"
                                  "Resume with the original settings, or start a new run with --run-id NEW_ID.")
    atomic.write_text(path, sig + "\n")


# ---------------------------------------------------------------------------------------------
# What run_all.sh reads from a preset
# ---------------------------------------------------------------------------------------------

def chain_overrides(overrides: Iterable[Override | str]) -> dict[str, bool]:
    """The chain.* overrides as chain.json's switches (chain.random-baseline=false, ...); a
    UsageError naming a switch that does not exist or a value other than true/false."""
    out: dict[str, bool] = {}
    for o in overrides:
        o = o if isinstance(o, Override) else parse_override(o)
        if o.stage != "chain":
            continue
        if o.flag not in CHAIN_SWITCHES:
            raise UsageError("override", f"'{o}'", f"the chain's switches are {', '.join(CHAIN_SWITCHES)}")
        if o.value not in ("true", "false"):
            raise UsageError("override", f"'{o}'", "a chain switch is true or false")
        out[o.flag] = o.value == "true"
    return out


def values(preset: str, overrides: Sequence[Override | str], configs: Path = CONFIGS) -> dict:
    """What bash needs from the preset, read from its files: chain.json's switches (then the
    chain.* overrides), the
    pretraining file, the demo's file, and from the pretraining's config as train/pretrain.py
    resolves it (its file, then the pretrain.* / train.* overrides, checked as the pretraining
    checks them: a refused value ends the program with status 2 and pretrain.py's one line) the
    mask parameters extract caches (the mask sets' strides only where the pretraining reads mask sets)
    and the backbone of the random-init retrieval."""
    check_files(preset, CHAIN_FILES, configs)
    chain = {**read_chain(stage_file(preset, "chain", configs)), **chain_overrides(overrides)}
    pt_config = stage_file(preset, "pretrain", configs)
    from train.pretrain import PretrainConfig

    cfg = parse(PretrainConfig, ["--config", str(pt_config), *stage_flags("pretrain", overrides)], prog="pretrain.py")
    if chain["linear-probe"]:
        check_files(preset, ("linear",), configs)
    demo = stage_file(preset, "demo", configs)
    scratch = scratch_flags(preset, cfg, overrides, configs) if chain["scratch-baseline"] else ()
    return {"RANDOM_BASELINE": int(chain["random-baseline"]), "LINEAR_PROBE": int(chain["linear-probe"]),
            "SCRATCH_BASELINE": int(chain["scratch-baseline"]), "SCRATCH_FLAGS": scratch,
            "LAMBDA": cfg.lam, "M": cfg.m, "BACKBONE": cfg.backbone,
            # mask sets only for a pretraining that reads them (--mask-source cache, no named set)
            "MASK_SET_STRIDES": tuple(cfg.strides) if cfg.mask_source == "cache" and not cfg.mask_set else (),
            "PT_CONFIG": str(pt_config), "DEMO_CONFIG": ("--config", str(demo)) if demo.is_file() else ()}


def scratch_epochs(pt_epochs: int, pt_batch: int, ft_epochs: int, ft_batch: int,
                   ft_milestones: Sequence[int], video_ratio: float = 1.0,
                   step_cost: float = 1.0) -> tuple[int, tuple[int, ...]]:
    """(epochs, milestones) of supervised training from scratch with as many steps as MAC's
    pretraining and finetuning together. An epoch is (videos / batch) steps; the pretraining sees
    ``video_ratio`` times the finetuning's videos (1: the same training videos; 1 / F for a
    finetuning on a fraction F of the labels), so each pretraining epoch is worth
    video_ratio * ft_batch / pt_batch finetuning epochs. The milestones keep their place in the
    schedule (a milestone at 80 % of the finetuning stays at 80 %). ``step_cost``: what one
    pretraining step costs in finetuning steps (1: as many steps; a pretraining step's FLOPs over a
    finetuning step's, train/flops.py: as much compute)."""
    epochs = ft_epochs + max(0, round(pt_epochs * video_ratio * step_cost * ft_batch / pt_batch))
    return epochs, tuple(max(1, round(m * epochs / ft_epochs)) for m in ft_milestones)


SCHEDULE_FLAGS = ("epochs", "batch-size", "milestones")


def finetune_schedule(preset: str, overrides: Sequence[Override | str], configs: Path = CONFIGS):
    """The finetuning's config as far as its length goes: ``finetune.json`` and the overrides of
    its epochs, batch size and milestones (a ``train.`` override of a pretraining-only flag, such
    as train.strides, must not stop the computation)."""
    from train.finetune import FinetuneConfig

    mine = [o for o in (o if isinstance(o, Override) else parse_override(o) for o in overrides)
            if o.flag in SCHEDULE_FLAGS]
    return parse(FinetuneConfig, ["--config", str(stage_file(preset, "finetune", configs)),
                                  *stage_flags("finetune", mine)], prog="finetune.py")


def scratch_flags(preset: str, pt_cfg, overrides: Sequence[Override | str], configs: Path = CONFIGS,
                  video_ratio: float = 1.0, step_cost: float = 1.0) -> tuple:
    """The flags that make the finetuning of ``finetune.json`` (and the overrides) the compute-
    matched baseline: --epochs / --milestones from ``scratch_epochs``, then the preset's
    ``scratch.json`` (the baseline's own choices, e.g. its learning rate, chosen on the validation
    split), which win. On run_all.sh's command line the finetuning's own overrides (finetune.*,
    train.*) come before these flags (the epochs here are computed from them) and the scratch.*
    overrides after them, so those win over everything."""
    ft = finetune_schedule(preset, overrides, configs)
    epochs, milestones = scratch_epochs(pt_cfg.epochs, pt_cfg.batch_size, ft.epochs, ft.batch_size, ft.milestones,
                                        video_ratio, step_cost)
    out = ["--epochs", str(epochs), "--milestones", *map(str, milestones)]
    own = stage_file(preset, "scratch", configs)
    if own.is_file():
        try:
            extra = json.loads(own.read_text())
        except ValueError as e:
            raise PresetError(f"{own}: not JSON ({e})", EXIT_FAILED_ITEMS) from None
        if not isinstance(extra, dict):
            raise PresetError(f"{own}: must be a JSON object of finetune.py flags", EXIT_FAILED_ITEMS)
        for k, v in extra.items():
            v = ",".join(map(str, v)) if isinstance(v, list) else ("true" if v is True else "false" if v is False else str(v))
            out += flag_args(k, v)
    return tuple(out)


def bash_assignments(vals: dict) -> str:
    def one(k, v):
        if isinstance(v, tuple):
            return f"{k}=({' '.join(shlex.quote(str(x)) for x in v)})"
        return f"{k}={v!r}" if isinstance(v, float) else f"{k}={shlex.quote(str(v))}"
    return "\n".join(one(k, v) for k, v in vals.items())


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------

def _configs_default() -> str:
    """The repository's configs/, as a path relative to the working directory when it is below
    it (run_all.sh runs from the repository root: configs/demo/pretrain.json)."""
    try:
        return os.path.relpath(CONFIGS)
    except ValueError:
        return str(CONFIGS)


_OVERRIDES_HELP = "stage.flag=value ... (as given to run_all.sh)"


@dataclass
class CheckOverridesCommand(Flags):
    """Check overrides: status 2 and one line naming the first bad one."""
    overrides: list = flag([], _OVERRIDES_HELP, positional=True, nargs="*")
    config_file = False

    def run(self) -> int:
        parse_overrides(self.overrides)
        return 0


@dataclass
class FlagsCommand(Flags):
    """Print the command-line flags the overrides give one stage, one flag or value a line."""
    stage: str = flag("", "the stage", choices=STAGE_NAMES, positional=True)
    overrides: list = flag([], _OVERRIDES_HELP, positional=True, nargs="*")
    config_file = False

    def run(self) -> int:
        for a in stage_flags(self.stage, parse_overrides(self.overrides)):
            print(a)
        return 0


@dataclass
class ValuesCommand(Flags):
    """Check the preset's files and print what run_all.sh needs from them as bash assignments
    (RANDOM_BASELINE, LINEAR_PROBE, SCRATCH_BASELINE, SCRATCH_FLAGS, LAMBDA, M, BACKBONE, MASK_SET_STRIDES,
    PT_CONFIG, DEMO_CONFIG)."""
    preset: str = flag("demo", "the preset (a folder of --configs)")
    configs: str = flag(_configs_default(), "the presets' folder")
    overrides: list = flag([], _OVERRIDES_HELP, positional=True, nargs="*")
    config_file = False

    def run(self) -> int:
        print(bash_assignments(values(self.preset, parse_overrides(self.overrides), Path(self.configs))))
        return 0


@dataclass
class DoneCommand(Flags):
    """Status 0 and the marker's path when the stage finished, status 1 when it did not."""
    stage: str = flag("", "the stage's name (its marker: STAGES_DIR/STAGE.done)", positional=True)
    stages_dir: str = flag(".", "the run's stages/ folder")
    config_file = False

    def run(self) -> int:
        if is_done(self.stages_dir, self.stage):
            print(marker(self.stages_dir, self.stage))
            return 0
        return 1


@dataclass
class MarkCommand(Flags):
    """Write a finished stage's marker (atomically): its wall time, command and end time."""
    stage: str = flag("", "the stage's name", positional=True)
    # not "command": parse_commands keeps the subcommand's name under that key
    argv: list = flag([], "the stage's command", positional=True, nargs="*")
    stages_dir: str = flag(".", "the run's stages/ folder")
    started: float = flag(0.0, "when the stage started (seconds since the epoch; 0: now)", lo=0)
    config_file = False

    def run(self) -> int:
        mark(self.stages_dir, self.stage, time.time() - self.started if self.started else 0.0, self.argv)
        return 0


@dataclass
class AdoptCommand(Flags):
    """Copy another run's marker of a stage whose results this run reuses (unless it has one)."""
    stage: str = flag("", "the stage's name", positional=True)
    stages_dir: str = flag(".", "this run's stages/ folder")
    source: str = flag("", "the other run's stages/ folder", name="--from", required=True)
    config_file = False

    def run(self) -> int:
        adopt(self.stages_dir, self.source, self.stage)
        return 0


@dataclass
class SignatureCommand(Flags):
    """Refuse a run directory started with other settings, else record this run's settings."""
    run_dir: str = flag("", "the run directory", required=True)
    preset: str = flag("", "the preset", required=True)
    pretrain_run: str = flag("", "the run whose pretraining is used")
    cache_dir: str = flag("", "the cache root")
    pretrain_dataset: str = flag("", "the pretraining's dataset, where the preset chooses it (k400-ucf101)")
    overrides: list = flag([], _OVERRIDES_HELP, positional=True, nargs="*")
    config_file = False

    def run(self) -> int:
        check_signature(self.run_dir, signature(self.preset, self.pretrain_run, self.cache_dir, self.overrides,
                                                self.pretrain_dataset or None))
        return 0


COMMANDS = {
    "check-overrides": (CheckOverridesCommand, "check stage.flag=value overrides"),
    "flags": (FlagsCommand, "one stage's flags from the overrides, one a line"),
    "values": (ValuesCommand, "what run_all.sh reads from a preset, as bash assignments"),
    "done": (DoneCommand, "whether a stage finished (status 0) or not (1)"),
    "mark": (MarkCommand, "write a finished stage's marker"),
    "adopt": (AdoptCommand, "take another run's marker of a stage"),
    "signature": (SignatureCommand, "check and record a run directory's settings"),
}


def main(argv: list[str] | None = None) -> int:
    _, cmd = parse_commands(COMMANDS, argv, description=__doc__.split("\n\n")[0], prog="python -m core.presets")
    try:
        return cmd.run()
    except ToolError as e:
        print(f"{TAG} error: {tool_error_message(e)}", file=sys.stderr)
        return getattr(e, "status", EXIT_USAGE)


if __name__ == "__main__":
    exit_with(main, "core.presets")
