"""The controls' results ledger: what each finished cell of train/controls.py measured, per test
video, as one small JSON file that can be kept in git (docs/results/controls/).

Why: a cell (one data instance x training seed x arm) costs 3-12 minutes on two idle CPU cores and
the full design of 3 x 2 x 9 cells six hours or more, more than one sitting. Its run folder holds
checkpoints and caches that never go into git, so without a record the evidence dies with the
machine. A record keeps exactly what the tables are computed from (each test video's label and
prediction for every evaluation, the nearest neighbour's label for retrieval, per-class accuracy,
the confusion matrix, the pretext accuracy) and where it came from (the code's commit, the frame
cache's manifest hash and its content hash), so slices measured on different days or machines
pool into one table with intervals and paired tests, and a slice measured on other frames is
refused, not pooled. Frames are matched by their content (``frames``:
preprocess.cache.frames_content_hash, the same for every build of the same videos with the same
decoding), not by the manifest hash, which changes with every build (shard uids): a data instance
regenerated on a fresh machine (make_demo and the JPEG encoding are deterministic) is the same
instance.

Record (format ``mac-controls-cell/1``)::

    {"format": "mac-controls-cell/1", "instance": 0, "seed": 0, "arm": "mac",
     "git": "<commit of the code that trained it>", "cache": "<frame cache manifest hash>",
     "frames": "<frame cache content hash>",
     "settings": "<hash of the preset's files, the overrides, the label fractions>",
     "recorded": "<UTC time of export>", "videos": [sorted test video names],
     "pretext": {"pretext_test_acc": 41.2, "pretext_chance": 12.5},          # pretrained arms
     "stages": {"evaluate_all": {"labels": [...], "preds": [...], "per_class_acc": {...},
                                 "confusion": {"classes": [...], "counts": [[...]]}},
                "evaluate_labels0.25": {...}, "evaluate_linear": {...}, "evaluate_reversed": {...},
                "retrieve": {"labels": [...], "preds": [...]}}}

``labels``/``preds`` follow ``videos`` (a stage evaluated on other videos carries its own
``names``). A prediction is evaluate.py's top-1 class (train.stats.load_correct: the class
metrics.json counted); for retrieval, the label of the nearest gallery video (R@1).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from core import atomic

FORMAT = "mac-controls-cell/1"
INSTANCE_FRAMES = "frames.json"   # in <dir>/cells/seed<I>/: {"cache": manifest hash, "frames": content hash}
STAGE_DIRS = ("evaluate_all", "evaluate_reversed", "evaluate_linear")   # besides evaluate_labels<f>


def file_name(instance: int, seed: int, arm: str) -> str:
    return f"seed{instance}-train{seed}-{arm}.json"


def _stage_from_scores(stage_dir: Path) -> dict | None:
    from train.stats import load_correct

    p = stage_dir / "scores.npz"
    if not p.is_file():
        return None
    names, _, labels, preds = load_correct(p)
    out = {"names": names, "labels": labels, "preds": preds}
    try:
        m = json.loads((stage_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        m = {}
    for k in ("per_class_acc", "confusion"):
        if m.get(k) is not None:
            out[k] = m[k]
    out["_cache"] = (m.get("cache") or {}).get("manifest_hash")
    return out


def _stage_from_neighbours(stage_dir: Path) -> dict | None:
    p = stage_dir / "neighbours.npz"
    if not p.is_file():
        return None
    with np.load(p, allow_pickle=False) as z:
        names = z["query_names"].astype(str)
        labels = np.asarray(z["query_labels"], dtype=np.int64)
        preds = np.asarray(z["gallery_labels"], dtype=np.int64)[np.asarray(z["neighbours"])[:, 0]]
    try:
        m = json.loads((stage_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        m = {}
    return {"names": names, "labels": labels, "preds": preds, "_cache": (m.get("cache") or {}).get("manifest_hash")}


def _git(cell_dir: Path) -> str | None:
    """The commit of the code that trained the cell: its first stage's config.json."""
    for stage in ("pretrain", "finetune_all", "linear"):
        try:
            cfg = json.loads((cell_dir / stage / "config.json").read_text())
        except (OSError, ValueError):
            continue
        commit = (cfg.get("git") or {}).get("commit") if isinstance(cfg.get("git"), dict) else cfg.get("git")
        if commit:
            return str(commit)
    return None


def from_cell(cell_dir: Path, instance: int, seed: int, arm: str) -> dict | None:
    """The record of one cell folder, from whatever stages it has finished; None when it has none."""
    from train.sweep import collect_cell

    cell_dir = Path(cell_dir)
    stages: dict = {}
    dirs = [cell_dir / s for s in STAGE_DIRS] + sorted(cell_dir.glob("evaluate_labels*"))
    for d in dirs:
        got = _stage_from_scores(d)
        if got is not None:
            stages[d.name] = got
    got = _stage_from_neighbours(cell_dir / "retrieve")
    if got is not None:
        stages["retrieve"] = got
    if not stages:
        return None
    caches = {s.pop("_cache") for s in stages.values()} - {None}
    if len(caches) > 1:
        raise ValueError(f"{cell_dir}: its stages were evaluated on different frame caches {sorted(caches)}")
    ref = "evaluate_all" if "evaluate_all" in stages else next(iter(stages))
    videos = np.sort(stages[ref]["names"])
    for s in stages.values():
        order = np.argsort(s["names"])
        for k in ("names", "labels", "preds"):
            s[k] = s[k][order]
        if np.array_equal(s["names"], videos):
            del s["names"]
    rec = {"format": FORMAT, "instance": int(instance), "seed": int(seed), "arm": arm, "git": _git(cell_dir),
           "cache": next(iter(caches), None), "videos": videos.tolist(), "stages": {}}
    try:                           # the content hash of that cache, written by controls.py beside the cells
        known = json.loads((cell_dir.parent.parent / INSTANCE_FRAMES).read_text())
    except (OSError, ValueError):
        known = {}
    if rec["cache"] is not None and known.get("cache") == rec["cache"] and isinstance(known.get("frames"), str):
        rec["frames"] = known["frames"]
    pt = collect_cell(SimpleNamespace(dir=cell_dir))
    if "pretext_test_acc" in pt:
        rec["pretext"] = {"pretext_test_acc": pt["pretext_test_acc"], "pretext_chance": pt.get("pretext_chance")}
    for name, s in stages.items():
        rec["stages"][name] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
    rec["_source"] = str(cell_dir)
    return rec


def check(rec, source: str) -> dict:
    """``rec`` if it is a well-formed record, else ValueError naming ``source`` and the problem."""
    def bad(why: str):
        return ValueError(f"{source}: {why}")

    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise bad(f"not a controls cell record (format {rec.get('format') if isinstance(rec, dict) else None!r}, "
                  f"expected {FORMAT!r})")
    for k, t in (("instance", int), ("seed", int), ("arm", str), ("videos", list), ("stages", dict)):
        if not isinstance(rec.get(k), t) or isinstance(rec.get(k), bool):
            raise bad(f"'{k}' is missing or not a {t.__name__}")
    if not rec["stages"]:
        raise bad("it records no stage")
    if not isinstance(rec.get("settings", ""), str):
        raise bad("'settings' must be a string (controls.settings_hash)")
    if not isinstance(rec.get("frames", ""), str):
        raise bad("'frames' must be a string (preprocess.cache.frames_content_hash)")
    for name, s in rec["stages"].items():
        if not isinstance(s, dict):
            raise bad(f"stage {name!r} is not an object")
        names = s.get("names", rec["videos"])
        for k in ("labels", "preds"):
            v = s.get(k)
            if not isinstance(v, list) or len(v) != len(names) or not all(isinstance(x, int) for x in v):
                raise bad(f"stage {name!r}: '{k}' must be {len(names)} integers, one per video")
    return rec


def load(path: Path) -> dict:
    """One record file, checked; ValueError naming the file otherwise."""
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot be read ({e})") from None
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    rec = check(rec, str(path))
    rec["_source"] = str(path)
    return rec


def load_dir(folder: Path) -> tuple[dict, list[str]]:
    """Every record in ``folder``: ({(instance, seed, arm): record}, [problems]). A damaged or
    duplicated file is a problem, named, and the others still load."""
    out: dict = {}
    problems: list[str] = []
    folder = Path(folder)
    if not folder.is_dir():
        return out, problems
    for p in sorted(folder.glob("*.json")):
        try:
            rec = load(p)
        except ValueError as e:
            problems.append(str(e))
            continue
        key = (rec["instance"], rec["seed"], rec["arm"])
        if key in out:
            problems.append(f"{p}: records instance {key[0]} seed {key[1]} arm {key[2]}, as {out[key]['_source']} "
                            "does; keeping the first")
            continue
        out[key] = rec
    return out, problems


def frames_identity(rec: dict) -> str | None:
    """What says which frames a record was measured on: its content hash, else (a cell folder
    from before content hashes) its manifest hash."""
    return rec.get("frames") or rec.get("cache")


def _content(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if not k.startswith("_") and k != "recorded"}


def dumps(rec: dict) -> str:
    """A record as text: one line per field and per stage (short, and diffs read stage by stage)."""
    body = _content(rec)
    if "recorded" in rec:
        body = {**body, "recorded": rec["recorded"]}
    lines = []
    for k, v in body.items():
        if k == "stages":
            inner = ",\n".join(f"  {json.dumps(n)}: {json.dumps(s, separators=(',', ':'))}" for n, s in v.items())
            lines.append(f'"stages": {{\n{inner}\n }}')
        else:
            lines.append(f"{json.dumps(k)}: {json.dumps(v)}")
    return "{\n " + ",\n ".join(lines) + "\n}\n"


def write(folder: Path, rec: dict) -> tuple[str, Path]:
    """Record ``rec`` in ``folder``, atomically: ("written" | "same", path). A file already there
    with other content is never replaced (that is evidence too): ValueError naming both."""
    path = Path(folder) / file_name(rec["instance"], rec["seed"], rec["arm"])
    if path.exists():
        old = load(path)
        if _content(old) == _content(json.loads(dumps(rec))):
            return "same", path
        raise ValueError(f"{path} already records instance {rec['instance']} seed {rec['seed']} arm {rec['arm']} "
                         f"with other results than {rec.get('_source', 'this run')}; it is kept (remove it to "
                         "record the new run)")
    rec = {**rec, "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic.write_text(path, dumps(rec))
    return "written", path
