#!/usr/bin/env bash
# The whole MAC pipeline, end to end, resumable:
#
#   bash run_all.sh                                   # = demo: synthetic data, 2-core CPU, <= 15 minutes
#   bash run_all.sh demo-seeds [--seeds 0,1,2]        # the demo for each seed and mean +- std (<= 45 min)
#   bash run_all.sh demo-controls [--instances 0 --seeds 0]   # MAC against its controls (train/controls.py)
#   bash run_all.sh demo-large                        # a bigger demo, the paper's model and recipe (one GPU, ~10 min)
#   bash run_all.sh ucf101 [--data-root data/ucf101]  # the paper's setting (GPU)
#   bash run_all.sh hmdb51 [--data-root data/hmdb51] [--ucf-root data/ucf101]
#   bash run_all.sh k400-ucf101 [--k400-root data/kinetics400] [--k400-subset classes.txt]  # K400 -> UCF101
#   bash run_all.sh sweep --preset demo --grid k=2,3 lambda=10,30   # ablation grids: train/sweep.py
#
# Options:  --data-root DIR   dataset root (default data/<dataset>)
#           --ucf-root DIR    hmdb51 only: UCF101 root for the pretraining (default data/ucf101)
#           --run-id ID       run directory runs/<dataset>/<ID> (default: the preset's name)
#           --pretrain-run ID hmdb51 only: the UCF101 run whose pretraining to use or create
#           --k400-root DIR   k400-ucf101 only: Kinetics-400 in its official layout (default data/kinetics400)
#           --k400-subset FILE  k400-ucf101 only: pretrain on these classes (one per line; Mini-Kinetics)
#           --k400-max-per-class N  k400-ucf101 only: at most N training clips per class
#                             (runs/ucf101/<ID>/pretrain; default ucf101, the ucf101 preset's run)
#           --runs-root DIR   default runs;  --cache-dir DIR  default data_cache
#           --allow-cpu       run the ucf101/hmdb51 presets without a GPU (very slow)
# Presets are files: configs/<preset>/<stage>.json, one per stage, read by the stage's script
#   (--config FILE); why each value: configs/README.md. demo-seeds runs the demo's.
# Overrides (after the options): STAGE.flag=value, STAGE in demo | extract | pretrain | finetune
#   (every finetuning) | scratch (the compute-matched scratch baseline only) | linear (both linear
#   probes) | evaluate | retrieve | train (pretrain + finetune + linear). Lists: comma-separated; booleans: true/false. Example: pretrain.epochs=5
#   finetune.batch-size=16 train.workers=4. They win over the preset files.
#
# Stages: [data (demos)] -> preflight -> extract -> pretrain -> finetune [+ finetune_random,
# finetune_scratch (from scratch with MAC's total steps), the linear probes linear, linear_random
# (demos)] -> evaluate [+ evaluate_random, evaluate_scratch, evaluate_linear,
# evaluate_linear_random] -> retrieve [+ retrieve_random] -> summary. Each writes
# <run>/stages/<stage>.done after it succeeded; rerunning the same command skips finished stages
# and resumes the interrupted one from its last checkpoint. A run directory remembers the
# preset and overrides it was started with and refuses different ones (use another --run-id).
{ # the whole script is one block: bash parses it completely before running, so editing this file
  # (or a git pull) while a run is in progress cannot change what that run executes
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source scripts/env.sh            # creates/activates .venv with the pinned requirements
PY=python

say() { printf '[run_all] %s\n' "$*"; }
die() { printf '[run_all] error: %s\n' "$*" >&2; exit "${2:-2}"; }
# presets, overrides and stage markers: core/presets.py (shared with train/sweep.py); its errors are
# one line "[run_all] error: ..." and its exit status is the run's
presets() { $PY -m core.presets "$@"; }

# ------------------------------------------------------------------------------ arguments
PRESET=demo
if [[ $# -gt 0 && $1 != -* && $1 != *=* ]]; then PRESET=$1; shift; fi
case $PRESET in demo|demo-seeds|demo-controls|demo-large|ucf101|hmdb51|k400-ucf101|sweep) ;;
  *) die "unknown preset '$PRESET' (demo | demo-seeds | demo-controls | demo-large | ucf101 | hmdb51 | k400-ucf101 | sweep)";; esac
if [[ $PRESET == demo-controls ]]; then
  # MAC beside controls that each change one thing, on several data instances and seeds, with
  # intervals and paired tests (train/controls.py; docs/demo.md, "Controls")
  exec $PY train/controls.py "$@"
fi
if [[ $PRESET == sweep ]]; then
  # ablation grids (train/sweep.py): bash run_all.sh sweep --preset demo --grid k=2,3 [stage.flag=value ...]
  exec $PY train/sweep.py "$@"
fi
if [[ $PRESET == demo-seeds ]]; then
  # the demo chain once per training seed (--seeds, default 0,1,2; the same generated data and
  # cache, made once), then every number as mean +- std over the seeds
  RUNS_ROOT_S=runs ARGS=() SEEDS=0,1,2
  while [[ $# -gt 0 ]]; do
    case $1 in --runs-root) RUNS_ROOT_S=$2; ARGS+=("$1" "$2"); shift 2;;
      --seeds) [[ ${2-} =~ ^[0-9]+(,[0-9]+)+$ ]] || die "--seeds wants two or more comma-separated seeds (got '${2-}')"
        SEEDS=$2; shift 2;;
      --run-id) die "demo-seeds names its runs demo-seed<S>";; *) ARGS+=("$1"); shift;; esac
  done
  runs=()
  for seed in ${SEEDS//,/ }; do
    bash ./run_all.sh demo --run-id "demo-seed$seed" "${ARGS[@]+"${ARGS[@]}"}" "train.seed=$seed" \
      "retrieve.seed=$seed" || exit $?
    runs+=("$RUNS_ROOT_S/demo/demo-seed$seed")
  done
  source scripts/env.sh
  exec python train/report.py --aggregate "${runs[@]}" --out-dir "$RUNS_ROOT_S/demo/demo-seeds"
fi
DATA_ROOT="" UCF_ROOT="data/ucf101" RUN_ID="$PRESET" PT_RUN=ucf101 RUNS_ROOT=runs CACHE_DIR="" ALLOW_CPU=0
K400_ROOT="data/kinetics400" K400_SUBSET="" K400_MAX=""
OVERRIDES=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --data-root) DATA_ROOT=$2; shift 2;;
    --ucf-root) UCF_ROOT=$2; shift 2;;
    --run-id) RUN_ID=$2; shift 2;;
    --pretrain-run) PT_RUN=$2; shift 2;;
    --k400-root) K400_ROOT=$2; shift 2;;
    --k400-subset) K400_SUBSET=$2; shift 2;;
    --k400-max-per-class) K400_MAX=$2; shift 2;;
    --runs-root) RUNS_ROOT=$2; shift 2;;
    --cache-dir) CACHE_DIR=$2; shift 2;;
    --allow-cpu) ALLOW_CPU=1; shift;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0;;
    *=*) OVERRIDES+=("$1"); shift;;
    *) die "unknown argument '$1' (overrides look like pretrain.epochs=5; see --help)";;
  esac
done
DATASET=$PRESET
[[ $PRESET == k400-ucf101 ]] && DATASET=ucf101     # pretrains on Kinetics-400, finetunes on UCF101
DATA_ROOT=${DATA_ROOT:-data/$DATASET}
CACHE_DIR=${CACHE_DIR:-data_cache}
if [[ $PRESET == demo-large ]]; then
  # another generated dataset of the demo's kind: its own cache root, so the two never share shards
  DATASET=demo
  [[ $CACHE_DIR == data_cache ]] && CACHE_DIR=data_cache/demo-large
fi
RUN_DIR="$RUNS_ROOT/$DATASET/$RUN_ID"

# the overrides' stages: demo | extract | pretrain | finetune | linear | evaluate | retrieve | train
presets check-overrides -- "${OVERRIDES[@]+"${OVERRIDES[@]}"}" || exit $?

# ------------------------------------------------------------------------------ presets
# A preset is a folder of files, configs/<preset>/<stage>.json (what each value is for:
# configs/README.md), each read by its stage's script through the script's own --config; what a
# file does not set is the script's default, i.e. the paper's recipe (docs/method.md sections 2-5). A
# stage's command line: --config FILE, then the stage's own flags (--dataset, --run-dir, --init,
# ...), then the overrides, which win.
CONFIGS=configs/$PRESET
SPLIT=1
# the pretraining dataset (hmdb51 pretrains on UCF101, with the ucf101 preset's pretrain.json, and
# reuses a ucf101 run's pretraining; which pretrain.json: core/presets.py, PT_CONFIG below)
PT_EXTRACT=()   # extract_masks.py flags of the pretraining dataset only (the Kinetics subset)
if [[ $PRESET == hmdb51 ]]; then
  PT_DATASET=ucf101 PT_ROOT=$UCF_ROOT PT_DIR="$RUNS_ROOT/ucf101/$PT_RUN/pretrain"
elif [[ $PRESET == k400-ucf101 ]]; then
  # the cache name of a subset is derived from it (extract_masks.py --cache-name), so two subsets
  # never share frames and the pretraining reads the one extracted here
  PT_DATASET=kinetics PT_ROOT=$K400_ROOT PT_DIR="$RUN_DIR/pretrain"
  if [[ -n $K400_SUBSET || -n $K400_MAX ]]; then
    [[ -z $K400_SUBSET || -f $K400_SUBSET ]] || die "--k400-subset $K400_SUBSET: no such file"
    [[ -z $K400_MAX || $K400_MAX =~ ^[1-9][0-9]*$ ]] || die "--k400-max-per-class $K400_MAX: must be an integer >= 1"
    sub=$(basename "${K400_SUBSET:-all}"); sub=${sub%.*}
    PT_EXTRACT=(--cache-name "kinetics-${sub//[^A-Za-z0-9_-]/_}${K400_MAX:+-max$K400_MAX}"
                ${K400_SUBSET:+--class-subset "$K400_SUBSET"} ${K400_MAX:+--max-per-class "$K400_MAX"})
    PT_DATASET=${PT_EXTRACT[1]}
  fi
else
  PT_DATASET=$DATASET PT_ROOT=$DATA_ROOT PT_DIR="$RUN_DIR/pretrain"
fi
mapfile -t X_EXTRACT < <(presets flags extract -- "${OVERRIDES[@]+"${OVERRIDES[@]}"}")
mapfile -t X_PRETRAIN < <(presets flags pretrain -- "${OVERRIDES[@]+"${OVERRIDES[@]}"}")   # + train.*
mapfile -t X_FINETUNE < <(presets flags finetune -- "${OVERRIDES[@]+"${OVERRIDES[@]}"}")   # + train.*
mapfile -t X_LINEAR < <(presets flags linear -- "${OVERRIDES[@]+"${OVERRIDES[@]}"}")       # + train.*
mapfile -t X_SCRATCH < <(presets flags scratch -- "${OVERRIDES[@]+"${OVERRIDES[@]}"}")     # scratch.* only
mapfile -t X_EVAL < <(presets flags evaluate -- "${OVERRIDES[@]+"${OVERRIDES[@]}"}")
mapfile -t X_RETRIEVE < <(presets flags retrieve -- "${OVERRIDES[@]+"${OVERRIDES[@]}"}")
mapfile -t X_DEMO < <(presets flags demo -- "${OVERRIDES[@]+"${OVERRIDES[@]}"}")

# What bash itself needs from the preset, read from its files (never repeated here) by
# core/presets.py, which first checks that the files the chain needs exist
# (configs/<preset>/{chain,extract,finetune,evaluate,retrieve}.json, the pretraining's file, and
# linear.json for the linear probes): the chain's switches, chain.json (RANDOM_BASELINE: a
# random-init baseline of every stage; LINEAR_PROBE: linear probes; SCRATCH_BASELINE: supervised
# from scratch with MAC's total steps, whose --epochs / --milestones (and scratch.json's flags) are
# SCRATCH_FLAGS), PT_CONFIG (the pretraining's
# file), DEMO_CONFIG (make_demo's --config, where the preset has a demo.json), and from the
# pretraining's config as train/pretrain.py resolves it (pretrain.json, then the pretrain.* /
# train.* overrides, checked as the pretraining checks them: a refused value ends the run here with
# status 2) the mask parameters extract caches (LAMBDA and M: the mask statistics; MASK_SET_STRIDES,
# one stored mask set per stride the pretraining draws, only where it reads them, --mask-source
# cache: pretrain.lambda=10 pretrain.strides=1,2 reach them) and the BACKBONE of the random-init
# retrieval.
PRESET_VALUES=$(presets values --preset "$PRESET" -- "${OVERRIDES[@]+"${OVERRIDES[@]}"}") || exit $?
eval "$PRESET_VALUES"

# ------------------------------------------------------------------------------ checks
if [[ $PRESET != demo && $ALLOW_CPU == 0 ]]; then   # demo-large, ucf101, hmdb51, k400-ucf101
  $PY -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' ||
    die "the $PRESET preset is the paper's setting (300 + 150 epochs of R(2+1)D-18) and needs a CUDA GPU.
Try the CPU demo: bash run_all.sh demo   (or pass --allow-cpu to run it anyway)"
fi
mkdir -p "$RUN_DIR/stages"
# what the run's results depend on (not where the videos lie), recorded in <run>/run_args.txt;
# checked once a stage past the preflight has finished, so fixing a wrong --data-root after a
# failed preflight is no problem (core/presets.py: signature, check_signature)
SIGNATURE_ARGS=(--preset "$PRESET" --pretrain-run "$PT_RUN" --cache-dir "$CACHE_DIR")
if [[ $PRESET == k400-ucf101 ]]; then SIGNATURE_ARGS+=(--pretrain-dataset "$PT_DATASET"); fi
presets signature --run-dir "$RUN_DIR" "${SIGNATURE_ARGS[@]}" -- "${OVERRIDES[@]+"${OVERRIDES[@]}"}" || exit $?
say "preset $PRESET: dataset $DATASET at $DATA_ROOT, run directory $RUN_DIR"

# ------------------------------------------------------------------------------ stage runner
stage() {   # stage NAME COMMAND...: run unless <run>/stages/NAME.done exists; time it; mark it
  local name=$1; shift
  local marker found=0
  SKIPPED=0
  marker=$(presets done --stages-dir "$RUN_DIR/stages" "$name") || found=$?
  if [[ $found == 0 ]]; then
    say "stage $name: done already ($marker), skipping"
    SKIPPED=1
    return 0
  fi
  [[ $found == 1 ]] || exit "$found"
  say "=== stage $name: $*"
  local t0 rc=0
  t0=$(date +%s.%N)
  "$@" || rc=$?
  if [[ $rc != 0 ]]; then
    say "stage $name FAILED (exit $rc). Fix the cause and rerun the same command: finished stages are skipped and $name resumes."
    exit "$rc"
  fi
  presets mark --stages-dir "$RUN_DIR/stages" --started "$t0" "$name" -- "$@"   # atomically
  say "stage $name finished in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }') s"
}

preflight() {   # preflight DATASET ROOT [FLAG...]: layout, ffmpeg, disk; on a missing dataset: where to get it
  local ds=$1 root=$2; shift 2
  if ! $PY preprocess/extract_masks.py --doctor --config "$CONFIGS/extract.json" --dataset "$ds" --data-root "$root" \
      --cache-dir "$CACHE_DIR" "$@" "${X_EXTRACT[@]+"${X_EXTRACT[@]}"}"; then
    cat >&2 <<EOF
[run_all] preflight failed for $ds at $root (details above).$(
  [[ $ds != "$DATASET" && $PRESET == hmdb51 ]] && printf '\n[run_all] (the %s preset pretrains on UCF101: pass --ucf-root DIR, or run "bash run_all.sh ucf101" first)' "$PRESET"
  [[ $ds != "$DATASET" && $PRESET == k400-ucf101 ]] && printf '\n[run_all] (the %s preset pretrains on Kinetics-400: pass --k400-root DIR)' "$PRESET")
[run_all] Put the dataset there in the layout shown (or pass --data-root DIR), or try the
[run_all] self-contained demo first:   bash run_all.sh demo
EOF
    return 2
  fi
}

extract() {     # extract DATASET ROOT [FLAG...]; idempotent: cached frames / masks are not recomputed
  local rc=0 ds=$1 root=$2; shift 2
  $PY preprocess/extract_masks.py --config "$CONFIGS/extract.json" --dataset "$ds" --data-root "$root" \
    --cache-dir "$CACHE_DIR" --lambda "$LAMBDA" --m "$M" ${MASK_SET_STRIDES[@]+--strides "${MASK_SET_STRIDES[@]}"} "$@" \
    "${X_EXTRACT[@]+"${X_EXTRACT[@]}"}" || rc=$?
  # exit 1: some videos could not be decoded (listed above and in failures.txt); every other
  # video is cached, so training goes on without them, as it would with the videos missing
  if [[ $rc == 1 ]]; then say "warning: some $ds videos failed to decode and are left out (see above)"; rc=0; fi
  return $rc
}

finetune() {    # finetune NAME INIT
  $PY train/finetune.py --config "$CONFIGS/finetune.json" --dataset "$DATASET" --split $SPLIT \
    --cache-dir "$CACHE_DIR" --init "$2" --run-dir "$RUN_DIR/$1" --resume "${X_FINETUNE[@]+"${X_FINETUNE[@]}"}"
}

scratch() {     # scratch NAME: supervised from random init with MAC's total steps (pretraining + finetuning)
  $PY train/finetune.py --config "$CONFIGS/finetune.json" --dataset "$DATASET" --split $SPLIT \
    --cache-dir "$CACHE_DIR" --init random --run-dir "$RUN_DIR/$1" --resume "${X_FINETUNE[@]+"${X_FINETUNE[@]}"}" \
    "${SCRATCH_FLAGS[@]}" "${X_SCRATCH[@]+"${X_SCRATCH[@]}"}"
}

linear_probe() {    # linear_probe NAME INIT: a linear classifier on the frozen backbone
  $PY train/finetune.py --config "$CONFIGS/linear.json" --dataset "$DATASET" --split $SPLIT \
    --cache-dir "$CACHE_DIR" --init "$2" --run-dir "$RUN_DIR/$1" --resume "${X_LINEAR[@]+"${X_LINEAR[@]}"}"
}

evaluate() {    # evaluate FINETUNE_STAGE OUT_STAGE
  # the finetuning run's final weights: best.pt is chosen on the test split's accuracy (when the
  # finetuning validates at all), so evaluating it would select the model on the test set; it
  # stays in the finetuning folder for information only
  local ck="$RUN_DIR/$1/last.pt"
  $PY train/evaluate.py --config "$CONFIGS/evaluate.json" --checkpoint "$ck" --cache-dir "$CACHE_DIR" \
    --out-dir "$RUN_DIR/$2" "${X_EVAL[@]+"${X_EVAL[@]}"}"
}

retrieve() {    # retrieve OUT_STAGE --checkpoint X | --init random
  local out=$1; shift
  $PY train/retrieve.py --config "$CONFIGS/retrieve.json" "$@" --dataset "$DATASET" --split $SPLIT \
    --cache-dir "$CACHE_DIR" --out-dir "$RUN_DIR/$out" "${X_RETRIEVE[@]+"${X_RETRIEVE[@]}"}"
}

pretrain() {
  $PY train/pretrain.py --config "$PT_CONFIG" --dataset "$PT_DATASET" --split $SPLIT --cache-dir "$CACHE_DIR" \
    --run-dir "$PT_DIR" --resume "${X_PRETRAIN[@]+"${X_PRETRAIN[@]}"}"
}

# ------------------------------------------------------------------------------ the pipeline
T_START=$(date +%s)
if [[ $DATASET == demo ]]; then
  stage data $PY preprocess/make_demo.py "${DEMO_CONFIG[@]+"${DEMO_CONFIG[@]}"}" --data-root "$DATA_ROOT" \
    "${X_DEMO[@]+"${X_DEMO[@]}"}"
fi
REUSE_PT=0
if [[ $PRESET == hmdb51 && -f $PT_DIR/last.pt ]] &&
    presets done --stages-dir "$RUNS_ROOT/ucf101/$PT_RUN/stages" pretrain >/dev/null; then
  REUSE_PT=1
  say "reusing the UCF101 pretraining of run $PT_RUN: $PT_DIR/last.pt"
  presets adopt --stages-dir "$RUN_DIR/stages" --from "$RUNS_ROOT/ucf101/$PT_RUN/stages" pretrain
fi
if [[ $PT_DATASET != "$DATASET" && $REUSE_PT == 0 ]]; then
  stage preflight_$PT_DATASET preflight "${PT_DATASET%%-*}" "$PT_ROOT" "${PT_EXTRACT[@]+"${PT_EXTRACT[@]}"}"
fi
stage preflight preflight "$DATASET" "$DATA_ROOT"
if [[ $PT_DATASET != "$DATASET" && $REUSE_PT == 0 ]]; then
  stage extract_$PT_DATASET extract "${PT_DATASET%%-*}" "$PT_ROOT" "${PT_EXTRACT[@]+"${PT_EXTRACT[@]}"}"
fi
stage extract extract "$DATASET" "$DATA_ROOT"
stage pretrain pretrain     # hmdb51: into runs/ucf101/<run-id>/pretrain (a finished one is a no-op)
stage finetune finetune finetune "$PT_DIR/last.pt"
if [[ $RANDOM_BASELINE == 1 ]]; then stage finetune_random finetune finetune_random random; fi
if [[ $SCRATCH_BASELINE == 1 ]]; then stage finetune_scratch scratch finetune_scratch; fi
if [[ $LINEAR_PROBE == 1 ]]; then
  stage linear linear_probe linear "$PT_DIR/last.pt"
  if [[ $RANDOM_BASELINE == 1 ]]; then stage linear_random linear_probe linear_random random; fi
fi
stage evaluate evaluate finetune evaluate
if [[ $RANDOM_BASELINE == 1 ]]; then stage evaluate_random evaluate finetune_random evaluate_random; fi
if [[ $SCRATCH_BASELINE == 1 ]]; then stage evaluate_scratch evaluate finetune_scratch evaluate_scratch; fi
if [[ $LINEAR_PROBE == 1 ]]; then
  stage evaluate_linear evaluate linear evaluate_linear
  if [[ $RANDOM_BASELINE == 1 ]]; then stage evaluate_linear_random evaluate linear_random evaluate_linear_random; fi
fi
stage retrieve retrieve retrieve --checkpoint "$PT_DIR/last.pt"
if [[ $RANDOM_BASELINE == 1 ]]; then
  stage retrieve_random retrieve retrieve_random --init random --backbone "$BACKBONE" --config-from "$PT_DIR/last.pt"
fi
stage summary $PY train/report.py --run-dir "$RUN_DIR" --preset "$PRESET" --cache-dir "$CACHE_DIR" \
  --pretrain-dir "$PT_DIR"
if [[ $SKIPPED == 1 ]]; then cat "$RUN_DIR/results_table.md"; fi   # report.py printed it otherwise
say "done in $(( $(date +%s) - T_START )) s (this invocation): $RUN_DIR/results.json, $RUN_DIR/summary.md"
exit 0
}
