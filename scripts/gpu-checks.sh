#!/usr/bin/env bash
# The device checks of issue 9 (and of 4 and 6 when their trainings are named) in one call on a CUDA machine
# (about 10 minutes on one H100/H200).
#
#   scripts/gpu-checks.sh OUTDIR [BUDGET_S]
#
# Steps, in order, each with its own time limit (a failed step loses nothing); every output goes to
# gpu-results/outputs/, and at the end OUTDIR gets what the device tool brings back (it returns at most
# 8 files): summary.txt (the headline lines of every output), timeline.txt, train-summary.txt,
# outputs.tgz (every output) and results.tgz (every small json/csv/log of the runs; no weights, no phantoms).
#   tests:   the CUDA unit tests (on-device augmentation, multi-crop, views, transfers without host syncs,
#            fused Adam, a segmentation training resumed on the GPU, micro-batched segmentation steps in bf16);
#   seg:     `bench perf seg --profile quick` (GPU_CHECKS_SEG_PROFILE): MoSE / single-decoder step time at batch 16
#            and the OT share, to set against the quick trainings' epoch lines (train and val_s seconds);
#            meanwhile the quick phantoms are generated (one core each: the OT solve is the only CPU work timed);
#   ssl:     `bench perf ssl --profile paper`: (a) end to end, (b) model-only ceiling, (c) conventional pipeline;
#   det:     with seg and ssl, the same benchmarks with run.deterministic=true against the default auto;
#   train:   quick-profile trainings side by side on the GPU, seed 0, until the time left is what the later
#            steps wanted need (entry 180 s, suite 130 s; a cut training resumes in a second call), chosen by
#            GPU_CHECKS_TRAIN: `mose-compiled` = `radiogrammetry` with segmentation.compile=default
#            (the paper profile's auto on CUDA: a whole compiled training, its eval graphs and predictions
#            included; epoch seconds against the eager `mose`), `mose` = `radiogrammetry` eager (MoSE
#            segmentation -> per-bone Dice, GED; predicted-mask 2MCI r vs truth), `single` = the same with
#            `segmentation.model=single` (Table 5's segmenter), `mose-g16` = `mose` with gamma0 = 1/16 annealed
#            linearly to 1 over 30 epochs (the paper's "from 1/N to 1, gradually"; every sample carries mass
#            at first: does the mixture still collapse onto one expert, and do the label maps improve?),
#            `mose-c16` = `mose` with gamma held at 1/16 = 1/N (every sample carries exactly 1/N of the mass:
#            the sample weights pi_k / S stay calibrated, the routing learns nothing; do the label maps reach
#            the single decoder's Dice?), `mose-long` = `mose` for 150 epochs, `mose-ce01` = `mose` with
#            ce_weight 0.01 (the CE term pulls towards the annotators' pixel-wise majority, here smaller bones),
#            `landmarks` = the landmark stage of `hsieh` (error in mm on the seg test split; stopped once
#            written); then scripts/seg_label_rules.py on every MoSE model (label-rules.txt: Dice against truth, annotators
#            and consensus of the mixture mean, the top expert, each expert and the vote; the mean routing
#            weights);
#   segeval: after train, `bench evaluate-seg` of every trained segmenter on the same held-out phantom images
#            (`bench data synth --profile RUN_PROFILE --seed 7 --n GPU_CHECKS_HELDOUT_N`, default 100, rendered
#            during the trainings), then `bench compare-seg` of the first MoSE training's seeds against the
#            single decoder's, per bone (issue 4: multi- vs single-decoder Dice and GED, images and seeds
#            resampled; about 40 s per model kept for it);
#   entry:   one full entry at the paper profile, run then projected: `jang` (VGG16 on the wrist ROI; with
#            roi.source=annotator, what `auto` picks on the phantom, so it trains no unused segmenter), then
#            `bench perf suite --entry jang --measured`: each stage's measured seconds (its _stage.json) beside
#            its projection (only with 180 s left; its paper phantoms render on 5 cores per preset during the
#            trainings);
#   suite:   `bench perf suite --profile paper`: the projected wall time of the paper suite, 3 seeds (80 s left);
#   segcompile: `bench perf seg` with segmentation.compile=default (150 s left);
#   compile: `bench perf ssl --set ssl.compile=MODE --feeds end_to_end model_only`: (a) and (b) with the
#            encoder compiled by inductor (MODE: GPU_CHECKS_COMPILE_MODES, default reduce-overhead = CUDA
#            graphs; default was measured on the H100), and the first step's compile time (150 s left each);
#   nchw:    `bench perf ssl --set ssl.channels_last=false`: (a), (b) in NCHW (cuDNN BatchNorm; 90 s left).
# GPU_CHECKS_STEPS picks steps (default "tests train entry suite compile"; seg, ssl, det, segcompile and nchw
# were measured on an H200 or H100 and run when named), GPU_CHECKS_COMPILE_MODES the compile step's modes
# (default reduce-overhead), GPU_CHECKS_TRAIN the trainings (default "mose-compiled"), GPU_CHECKS_SEEDS their
# seeds (default "0"; one process per training and seed, all side by side).
# Measured on an H200 (2026-11-27, steps "tests seg ssl det train entry suite", budget 560): tests 42 s, seg and
# det 58 s, ssl and det 113 s, the eager quick MoSE radiogrammetry entry 198 s (2.2 s an epoch), suite 132 s;
# entry was skipped (142 s left). Earlier (2026-11-26): the landmark stage 245 s on an H200; on an H100, side by
# side with the single decoder, deterministic MoSE epochs took 5.1-10 s. Trainings save a resumable state every
# minute (checkpoint.minutes=1, which changes no result), so a training cut by the budget continues in a second
# call on the still-warm machine (gpu-results/ is git-ignored and stays there):
# GPU_CHECKS_STEPS=train bash scripts/gpu-checks.sh $OUT 300. The machine is given back after 30 s idle:
# make that call at once, or it starts a bare machine where nothing resumes.
# On an H100 (2026-11-28, GPU_CHECKS_STEPS="train segeval" GPU_CHECKS_TRAIN="mose-compiled single"
# GPU_CHECKS_SEEDS="0 1" GPU_CHECKS_SEGEVAL_RUNS=2, budget 550): phantoms 22 s; the single decoders' entries
# 195 s; the compiled MoSEs' 60 epochs 297 s (first epoch 108 s), then their evaluation recompiled for every
# batch size and was cut at 430 s (the trained model is now eager); evaluate-seg of a single decoder on 100
# held-out images 17-21 s. For that call now: budget 580 with GPU_CHECKS_SEGEVAL_RUNS=1 (timeout_s 595).
# Without installation: run from the repository root with the dependencies importable (PYTHONPATH).
# On the lent device machine: fill .whl here with `../shared/tools/gpu-wheels.sh pydicom`, carry .whl and run
#   bash scripts/gpu-checks.sh $OUT 560
# Where POT, Optuna, MLflow or pydicom do not import, the script installs the wheels of .whl into .whl-site
# itself (every call: a machine left idle 30 s is given back, and the next call starts a bare one), and
# it stops with rc 3 before any step when they still do not import (2026-11-28: a second call without
# the install lost its trainings after 100 s each).
set -u
OUT=${1:?usage: scripts/gpu-checks.sh OUTDIR [BUDGET_S]}
BUDGET=${2:-560}
deps_import() { python3 -c "import ot, optuna, mlflow, pydicom" 2>/dev/null; }
if ! deps_import && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .whl-site .whl/*.whl
  export PYTHONPATH=$PWD/.whl-site${PYTHONPATH:+:$PYTHONPATH}
fi
deps_import || { echo "POT, Optuna, MLflow or pydicom do not import: fill .whl (header) and carry it" >&2; exit 3; }
RES=${GPU_CHECKS_RESULTS:-$PWD/gpu-results}
DEV=${GPU_CHECKS_DEVICE:-cuda}
RUN_PROFILE=${GPU_CHECKS_RUN_PROFILE:-quick}    # smoke/cpu: a plumbing check of this script
PERF_PROFILE=${GPU_CHECKS_PERF_PROFILE:-paper}
STEPS=" ${GPU_CHECKS_STEPS-tests train entry suite compile} "
TRAIN=" ${GPU_CHECKS_TRAIN-mose-compiled} "
SEEDS=${GPU_CHECKS_SEEDS:-0}                    # seeds of every training, each its own process
want() { [[ "$STEPS" == *" $1 "* ]]; }
wanttrain() { [[ "$TRAIN" == *" $1 "* ]]; }
BENCH="python3 -m bench.cli"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
W=$RES/outputs            # every output; $OUT gets the few files the device tool brings back (at most 8)
rm -rf "$W"; mkdir -p "$OUT" "$RES" "$W"
T0=$(date +%s)
now() { echo $(( $(date +%s) - T0 )); }
log() { echo "[$(now) s] $*" | tee -a "$W/timeline.txt"; }
left() { local l=$(( $1 - $(now) )); [ "$l" -gt 5 ] && echo "$l" || echo 5; }

log "start: $(python3 -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA")')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$W/timeline.txt" 2>&1

# phantoms of a profile, one background process per preset, where `bench run --results $RES` looks for them
gen_phantoms() { # profile, workers per preset (0: all cores)
  for preset in public clinical; do
    python3 - "$RES" "$preset" "$1" "$2" >"$W/phantom-$1-$preset.txt" 2>&1 <<'EOF' &
import sys
from pathlib import Path
from bench.config import resolve
from bench.data.phantom import PhantomConfig, synthesize
from bench.data.phantom.writer import default_workers
from bench.data.provision import ROLES, planned_paths
res, preset, profile, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
role = {v: k for k, v in ROLES.items()}[preset]
config = resolve(profile)
path = planned_paths(config, Path(res) / "cache")[role]
if not (path / "manifest.csv").is_file():
    n = PhantomConfig.for_preset(preset, profile).n_images
    synthesize(path, preset=preset, profile=profile, seed=config.data.phantom_seed, overwrite=True,
               workers=min(workers, default_workers(n)) if workers else default_workers(n))
print("phantom", path)
EOF
  done
}
gen_phantoms "$RUN_PROFILE" 0

if want tests; then
  log "cuda tests"
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/methods/test_augment.py tests/methods/test_multicrop.py \
    tests/methods/test_views.py tests/methods/test_affine.py tests/methods/test_transfer.py tests/methods/test_optim.py \
    "tests/methods/segmentation/test_train.py::test_interrupted_training_resumes_bit_identical" \
    tests/methods/segmentation/test_micro_batch.py \
    >"$W/cuda-tests.txt" 2>&1
  log "cuda tests rc=$?"
fi
if want seg; then
  log "perf seg"
  timeout 120 $BENCH perf seg --profile "${GPU_CHECKS_SEG_PROFILE:-$RUN_PROFILE}" --device "$DEV" --repeats 10 \
    >"$W/perf-seg.txt" 2>&1
  log "perf seg rc=$?"
  if want det; then
    timeout 120 $BENCH perf seg --profile "${GPU_CHECKS_SEG_PROFILE:-$RUN_PROFILE}" --device "$DEV" --repeats 10 \
      --set run.deterministic=true >"$W/perf-seg-deterministic.txt" 2>&1
    log "perf seg deterministic rc=$?"
  fi
fi
wait; log "phantoms ready"
if want ssl; then
  log "perf ssl"
  timeout 180 $BENCH perf ssl --profile "$PERF_PROFILE" --device "$DEV" --repeats 20 --warmup 5 >"$W/perf-ssl.txt" 2>&1
  log "perf ssl rc=$?"
  if want det; then
    timeout 120 $BENCH perf ssl --profile "$PERF_PROFILE" --device "$DEV" --repeats 10 --warmup 3 \
      --set run.deterministic=true --feeds end_to_end model_only >"$W/perf-ssl-deterministic.txt" 2>&1
    log "perf ssl deterministic rc=$?"
  fi
fi

# quick trainings side by side (OMP threads split between them). They stop early enough to leave the later
# steps wanted their time (entry 180 s, suite 130 s; compile runs only when 150 s are left); a training cut
# there resumes from its last saved minute in a second call (GPU_CHECKS_STEPS=train)
RESERVE=20; want entry && RESERVE=$(( RESERVE + 180 )); want suite && RESERVE=$(( RESERVE + 130 ))
HELDOUT_N=${GPU_CHECKS_HELDOUT_N:-100}
want segeval && RESERVE=$(( RESERVE + 40 * ${GPU_CHECKS_SEGEVAL_RUNS:-$(( $(wc -w <<<"$TRAIN") * $(wc -w <<<"$SEEDS") ))} + 20 ))
TRAIN_END=$(( BUDGET - RESERVE ))
run() { # name, extra args...: one process per seed of GPU_CHECKS_SEEDS, side by side
  local name=$1 seed; shift
  for seed in $SEEDS; do
    OSTEOBENCH_EPOCH_LINES=1 OMP_NUM_THREADS=5 timeout "$(left $TRAIN_END)" $BENCH run --profile "$RUN_PROFILE" --seeds "$seed" \
      --device "$DEV" --results "$RES" --no-mlflow --name "$name" --set checkpoint.minutes=1 "$@" \
      >>"$RES/run-$name-s$seed.log" 2>&1 && log "run $name seed $seed rc=0" || log "run $name seed $seed rc=$?" &
  done
  wait
}
if want train; then
  log "quick trainings until $TRAIN_END s:$TRAIN"
  # meanwhile the paper phantoms of the entry step render on a few cores (not part of any timed stage)
  want entry && gen_phantoms "$PERF_PROFILE" 5
  want segeval && { $BENCH data synth --preset public --profile "$RUN_PROFILE" --seed 7 --n "$HELDOUT_N" \
    --out "$RES/heldout" --overwrite --workers 3 >"$W/heldout-synth.txt" 2>&1 & }
  wanttrain mose && run mose --entry radiogrammetry &
  wanttrain mose-compiled && run mose-compiled --entry radiogrammetry --set segmentation.compile=default &
  wanttrain mose-g16 && run mose-g16 --entry radiogrammetry --set segmentation.gamma0=0.0625 \
    --set segmentation.gamma_schedule=linear --set segmentation.gamma_anneal_epochs=30 &
  wanttrain mose-c16 && run mose-c16 --entry radiogrammetry --set segmentation.gamma0=0.0625 \
    --set segmentation.gamma_schedule=constant &
  wanttrain mose-long && run mose-long --entry radiogrammetry --set segmentation.epochs=150 &
  wanttrain mose-ce01 && run mose-ce01 --entry radiogrammetry --set segmentation.ce_weight=0.01 &
  wanttrain single && run single --entry radiogrammetry --set segmentation.model=single &
  if wanttrain landmarks; then
    run landmarks --entry hsieh &
    HS=$!
    while kill -0 $HS 2>/dev/null; do
      if ls "$RES"/cache/landmarks/*/landmark_error.json >/dev/null 2>&1; then
        log "landmark error written; stopping hsieh"; pkill -f "name landmarks" ; break
      fi
      sleep 5
    done
  fi
  wait; log "trainings done"
  # the numbers issues 4 and 6 ask for, one line each: segment eval (per split) and radiogrammetry's truth check
  python3 - "$RES" >"$W/train-summary.txt" 2>&1 <<'PY'
import json, pathlib, sys
res = pathlib.Path(sys.argv[1])
for f in sorted(res.glob("cache/segment_eval/*/eval.json")):   # the segment stage's companion
    r = json.loads(f.read_text())
    t = r["train"]
    material = json.loads((f.parent / "_stage.json").read_text())["material"]
    print(f.parent.name, "seed", material.get("seed"), "model", t["model"], "compile", t.get("compile"), "best epoch", t["best_epoch"],
          "s/epoch", round(t["seconds_per_epoch"], 3), "unlearnt", r.get("unlearnt_bones"))
    for split, s in r["splits"].items():
        terms = {k: round(s[k], 4) for k in s if k.startswith("ged") or k in ("hungarian_iou", "ece")}
        print(" ", split, terms, "dice_truth", {k: round(v, 3) for k, v in (s["dice_truth"] or {}).items()},
              "dice_consensus_truth", {k: round(v, 3) for k, v in (s.get("dice_consensus_truth") or {}).items()})
        for name, d in (s.get("dice_annotators") or {}).items():
            print("   dice", name, {k: round(v, 3) for k, v in d.items()})
for f in sorted(res.glob("cache/radiogrammetry/*/truth_check.json")):
    print(f.parent.name, f.read_text().replace("\n", " ")[:600])
for f in sorted(res.glob("cache/*/*/_stage.json")):
    st = json.loads(f.read_text())
    print("stage", f.parent.parent.name, f.parent.name, "seconds", round(st.get("seconds", float("nan")), 1))
PY
  # issue 4: the label rules of every MoSE model trained (mixture mean, top expert, each expert, vote)
  for d in "$RES"/cache/segment/*/; do
    python3 scripts/seg_label_rules.py "$d" "$(ls -d "$RES"/cache/phantom/public-"$RUN_PROFILE"-* | head -1)" \
      >>"$W/label-rules.txt" 2>&1
  done
fi
enough() { [ $(( BUDGET - $(now) )) -ge "$1" ] || { log "skipping $2: $(( BUDGET - $(now) )) s left"; false; }; }
if want segeval && [ -f "$RES/heldout/manifest.csv" ]; then
  # issue 4: every trained segmenter on the same held-out phantom images, then the first MoSE training's
  # seeds against the single decoder's (bench compare-seg: images and seeds resampled, per bone)
  log "segeval on $HELDOUT_N held-out images"
  # seed by seed, so that a short budget still evaluates both arms of the comparison
  for d in $(for s in $SEEDS; do ls -d "$RES"/*/radiogrammetry/seed"$s" 2>/dev/null; done); do
    [ -f "$d/metrics.json" ] || continue
    tag=$(basename "$(dirname "$(dirname "$d")")")-$(basename "$d")
    enough 40 "segeval $tag" || break
    timeout "$(left $(( BUDGET - 30 )))" $BENCH evaluate-seg "$d" --data "$RES/heldout" --out "$W/segeval/$tag" \
      --device "$DEV" --no-mlflow >"$W/segeval-$tag.txt" 2>&1
    log "evaluate-seg $tag rc=$?"
  done
  A=$(for t in $TRAIN; do [ "$t" != single ] && ls -d "$W"/segeval/"$t"-seed* 2>/dev/null; done | head -"$(wc -w <<<"$SEEDS")")
  B=$(ls -d "$W"/segeval/single-seed* 2>/dev/null)
  if [ -n "$A" ] && [ -n "$B" ]; then
    { echo "A (MoSE): $(echo $A | xargs -n1 basename | xargs)"; echo "B (single): $(echo $B | xargs -n1 basename | xargs)"
      $BENCH compare-seg $A --vs $B --per-bone --out "$W/compare-seg.json"; } >"$W/perf-compare-seg.txt" 2>&1
    log "compare-seg rc=$?"
  fi
fi
if want entry && enough 180 entry; then
  log "paper entry jang: run"
  timeout "$(left $(( BUDGET - 90 )))" $BENCH run --entry jang --profile "$PERF_PROFILE" --seeds 0 --device "$DEV" \
    --set roi.source=annotator --results "$RES" --no-mlflow --name paper-jang >"$RES/run-paper-jang.log" 2>&1
  log "run paper jang rc=$?; projection against the stages it finished (--measured)"
  timeout "$(left $(( BUDGET - 10 )))" $BENCH perf suite --entry jang --profile "$PERF_PROFILE" --device "$DEV" \
    --seeds 0 --set roi.source=annotator --repeats 3 --warmup 2 --results "$RES" --measured \
    >"$W/perf-entry-jang.txt" 2>&1
  log "projection rc=$?"
fi
if want suite && enough 80 suite; then
  log "perf suite"
  timeout "$(left $(( BUDGET - 10 )))" $BENCH perf suite --profile "$PERF_PROFILE" --device "$DEV" --repeats 3 \
    --warmup 2 --results "$RES" >"$W/perf-suite.txt" 2>&1
  log "perf suite rc=$?"
fi
if want segcompile && enough 150 "seg compile"; then
  log "perf seg, backbone and head compiled"
  timeout "$(left $(( BUDGET - 20 )))" $BENCH perf seg --profile "${GPU_CHECKS_SEG_PROFILE:-$RUN_PROFILE}" \
    --device "$DEV" --repeats 10 --set segmentation.compile=default >"$W/perf-seg-compile.txt" 2>&1
  log "perf seg compiled rc=$?"
fi
for mode in ${GPU_CHECKS_COMPILE_MODES-reduce-overhead}; do
  if want compile && enough 150 "compile $mode"; then
    log "perf ssl, encoder compiled ($mode)"
    timeout "$(left $(( BUDGET - 20 )))" $BENCH perf ssl --profile "$PERF_PROFILE" --device "$DEV" --repeats 20 \
      --warmup 3 --set ssl.compile=$mode --feeds end_to_end model_only >"$W/perf-ssl-compile-$mode.txt" 2>&1
    log "perf ssl compiled ($mode) rc=$?"
  fi
done
if want nchw && enough 90 nchw; then
  log "perf ssl, NCHW layout"
  timeout "$(left $(( BUDGET - 20 )))" $BENCH perf ssl --profile "$PERF_PROFILE" --device "$DEV" --repeats 20 \
    --warmup 5 --set ssl.channels_last=false --feeds end_to_end model_only >"$W/perf-ssl-nchw.txt" 2>&1
  log "perf ssl NCHW rc=$?"
fi

# the headline lines of every output in one file, to read first
for f in "$W"/perf-*.txt "$W"/segeval-*.txt "$W"/train-summary.txt "$W"/label-rules.txt "$W"/cuda-tests.txt; do
  [ -f "$f" ] || continue
  echo "== $(basename "$f")"
  grep -E "torch settings|samples/s|ms/step|projected|measured|^  (stage|total|jang|segment|pretrain) |model |test |passed|failed|error|mean pi_k|vs truth|^(A|B) \(|^(metric|mean|GED|lowest bone|laterality|ged|hungarian_iou|dice_truth)|images \(all\)" \
    "$f" | head -40
done >"$W/summary.txt" 2>&1
(cd "$RES" && find . -path ./cache/phantom -prune -o -path ./outputs -prune -o -type f \( -name '*.json' -o -name '*.csv' -o -name '*.log' \
   -o -name '*.txt' -o -name '*.parquet' \) -size -4M -print | tar czf "$OUT/results.tgz" -T -)
log "end"
cp "$W/summary.txt" "$W/timeline.txt" "$OUT"/
for f in train-summary.txt label-rules.txt; do [ -f "$W/$f" ] && cp "$W/$f" "$OUT"/; done
tar czf "$OUT/outputs.tgz" -C "$W" .
