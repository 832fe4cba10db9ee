#!/usr/bin/env bash
# The GPU part of the performance table, in one run on a single H100/H200 machine (no network
# there; its own PyTorch 2.11 and transformers 5.x). Target: under 8 minutes; parts 2-4 are
# time-boxed (LOOP_BOX 240 s, OPT_BOX 90 s, MODEL_BOX 130 s), so the whole stays under ~8 minutes
# even when compiling is slow.
#
#   here:   bash bench/fetch_wheels.sh          # Composer/Streaming wheels + T5 tokenizer -> bench/wheels
#   there:  bash bench/gpu_check.sh [OUT_DIR]   # device tool: carry ["bench/wheels"], timeout_s 600
#
# Parts (a failing part is reported and the next one runs):
#   1. environment: GPU, torch, transformers; bench/wheels installed with --no-deps into a
#      --target directory on PYTHONPATH (without them only the SDPA kernel and projection-fusion
#      checks run: every other part imports Composer).
#   2. the real Composer loop, first (it is the headline, and it fills the compile cache the other
#      parts reuse): LOOP_STEPS (60) steps of yamls/pt_base.yaml (bf16 + compile) on synthetic MDS
#      rows of 568 tokens, through the launcher as a user runs it, with the loop_probe callback:
#      batches 21-28 under torch.cuda.set_sync_debug_mode('warn') (every wait for the GPU left in
#      a steady batch, by the line that makes it) and batches 31-38 under torch.profiler (the
#      fraction of the wall time the GPU ran no kernel, top kernels by GPU time).
#   3. the optimizer case (--only optimizer --device cuda): nanoT5's per-parameter AdamWScale
#      against ours, eager (multi-tensor) and compiled, at T5-base shapes, with the compile time.
#   4. the model case (python -m bench --only model --device cuda): T5 v1.1-base, batch 128
#      (MODEL_MICROBATCH rows per forward, default 128), bf16 autocast: the bare training step
#      sdpa+compile+opt (forward, backward, clipping, the compiled adamwscale step) and
#      sdpa+compile (forward and backward only): step time, tokens/s, MFU vs the bf16 peak, peak
#      memory; before the table, which SDPA kernel runs T5's biased self-attention and its
#      cross-attention. (Against transformers' T5: part 6.)
#   5. the report: bare step and loop side by side (s/step, tokens/s, MFU; the loop's s/step is the
#      median of the 10-step windows after the first, which compiles, leaving out the two the probe
#      watched), the loop's overhead (target < 5%), the waits, the profile, the optimizer rows; all
#      of it also in one JSON file, bench/results/<gpu>-<date>.json, copied into OUT_DIR.
#   6. only with OPTIONS=1, as a second run (SKIP_MODEL=1 SKIP_OPT=1 SKIP_LOOP=1 OPTIONS=1): the
#      model step's options, each against sdpa+compile from part 4 (which the defaults keep until
#      these are measured): hf+compile (transformers' T5 with the same weights and flags: the
#      >= 1.3x target), eager sdpa and hf, triton+compile (our fused kernel, the bias gradient
#      summed over the batch inside it; before the table it is checked against SDPA's logits and
#      gradients and timed alone against SDPA's kernel at the encoder's and decoder's shapes),
#      flex+compile (FlexAttention, the bias table in a
#      score_mod; also checked against SDPA's logits and gradients), sdpa+closs (the fp32
#      cross-entropy compiled with the model: a fused loss), sdpa+cudagraphs (reduce-overhead:
#      CUDA graphs, the shapes being static), sdpa+autotune (max-autotune-no-cudagraphs);
#      time-boxed at 480 s (rows printed before the limit stand). OPTIONS_VARIANTS changes the list;
#      MODEL_MICROBATCH=64 etc. show what a smaller microbatch costs (the peak memory column says
#      how much room the 128 rows leave).
#   7. only with SCALING=1 (e.g. a second run with SKIP_MODEL=1 SKIP_OPT=1 SKIP_LOOP=1 SCALING=1):
#      the scaling case (python -m bench --only scaling --device cuda), eager bf16:
#      small/base/large at batch 32, base at batches 16-128 and lengths 128-2048; time-boxed at 300 s.
# Knobs (environment): MODEL_VARIANTS, MODEL_MICROBATCH, MODEL_REPEATS (5), LOOP_STEPS (60),
# LOOP_ATTN (model.attn_impl of the loop: sdpa; triton for our kernel), LOOP_PROBE (the loop_probe windows, key=value), LOOP_BARE_VARIANT (the model
# case's row the loop is compared with: sdpa+compile+opt; sdpa+compile+eageropt for a loop with
# LOOP_OVERRIDES=optimizer.compiled=false, sdpa+compile+fusedopt for optimizer.fused=true, sdpa+opt for an
# eager loop, LOOP_OVERRIDES=compile=false),
# LOOP_BOX, OPT_BOX, MODEL_BOX (seconds), RESULTS_DIR (bench/results), SKIP_MODEL=1, SKIP_OPT=1,
# SKIP_LOOP=1, OPTIONS=1, OPTIONS_VARIANTS, SCALING=1, SCALING_ARGS (extra --scaling-* options);
# for the CPU test of part 2 (tests/test_bench_model.py) LOOP_TOKENIZER, LOOP_INPUT_LENGTH,
# LOOP_OVERRIDES (extra key=value overrides of the run) and OPT_ARGS.
# Where Composer is already installed (a development machine) nothing is installed (t5composer itself
# never is: this checkout is put on PYTHONPATH).
set -uo pipefail
cd "$(dirname "$0")/.."
# This checkout's t5composer for every process (recipes/train.py under the launcher too): the
# package need not be installed there, and an installed one elsewhere is not what is measured.
# `python -m bench` finds bench/ in the working directory, the repository root.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# One compile cache for both parts: the loop's kernels are mostly the model case's.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/t5c-inductor-cache}
PY=${PYTHON:-python3}
SITE=/tmp/t5c-site
WORK=$(mktemp -d /tmp/t5c-gpu-check.XXXXXX)
START=$(date +%s)
say() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*"; }

# ---- 1. environment ------------------------------------------------------------------------
say "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || say "nvidia-smi failed"
"$PY" -c 'import sys, torch, transformers; print(f"python {sys.version.split()[0]}, torch {torch.__version__} (cuda {torch.version.cuda}), transformers {transformers.__version__}, gpu {torch.cuda.get_device_name() if torch.cuda.is_available() else None}")'
HAVE_COMPOSER=0
if "$PY" -c 'import composer, streaming; print(f"composer {composer.__version__}, streaming {streaming.__version__} (installed)")' 2>/dev/null; then
    HAVE_COMPOSER=1  # a development machine: nothing to install
elif ls bench/wheels/*.whl >/dev/null 2>&1; then
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" bench/wheels/*.whl; then
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
        if "$PY" -c 'import composer, streaming; print(f"composer {composer.__version__}, streaming {streaming.__version__} (carried wheels)")'; then
            HAVE_COMPOSER=1
        fi
    fi
fi
if [ "$HAVE_COMPOSER" != 1 ]; then
    say "no usable bench/wheels (run bash bench/fetch_wheels.sh here and carry bench/wheels): running only the checks that need no Composer"
    "$PY" - <<'PY' 2>&1 | tee "$OUT/kernels.log"
import torch
from bench.model import projection_fusion_check, sdpa_kernel_check
for which, info in sdpa_kernel_check('cuda', dtype=torch.bfloat16).items():
    print(f'SDPA {which}: default runs {info["default"]}; accepts {info["accepts"]}')
print('projections fwd+bwd ms (T5-base, 128 x 512 tokens):',
      projection_fusion_check('cuda', dtype=torch.bfloat16, tokens=128 * 512, d_model=768, inner=768, d_ff=2048))
PY
    exit 1
fi

# ---- 2. the Composer loop (first: it is the headline, and it fills the compile cache) ------------------------------------------------------------------
if [ "${SKIP_LOOP:-0}" != 1 ]; then
    TOK=${LOOP_TOKENIZER:-bench/wheels/t5-tokenizer}
    STEPS=${LOOP_STEPS:-60}
    INPUT_LENGTH=${LOOP_INPUT_LENGTH:-512}
    if [ ! -f "$TOK/tokenizer.json" ]; then
        say "no $TOK (bench/fetch_wheels.sh saves it): skipping the Composer loop"
    else
        say "Composer loop: synthetic data"
        "$PY" -m bench.train_loop prepare --out "$WORK/data" --tokenizer "$TOK" \
            --input-length "$INPUT_LENGTH" --rows $(( (STEPS + 30) * 128 )) 2>&1 | grep -v Warning
        say "Composer loop: $STEPS steps of yamls/pt_base.yaml"
        PROBE=()
        for kv in ${LOOP_PROBE:-sync_start=21 sync_steps=8 profile_start=31 profile_steps=8}; do
            PROBE+=("callbacks.loop_probe.$kv")
        done
        timeout "${LOOP_BOX:-240}" "$PY" -m composer.cli.launcher -n 1 recipes/train.py yamls/pt_base.yaml \
            variables.data_local="$WORK/data" tokenizer.name="$TOK" data.eval_split=null \
            max_duration="${STEPS}ba" scheduler.t_warmup=10ba callbacks.nanot5_log.interval=10 \
            model.attn_impl="${LOOP_ATTN:-sdpa}" data.input_length="$INPUT_LENGTH" autoresume=false '~save_folder' \
            run_name=gpu_check_loop callbacks.loop_probe.out="$OUT/loop_probe.json" "${PROBE[@]}" \
            ${LOOP_OVERRIDES:-} > "$OUT/loop.log" 2>&1
        say "Composer loop done (exit $?)"
        grep -E '^\[train\]|Error|error' "$OUT/loop.log" | tail -20
    fi
fi
# ---- 3. the optimizer case -----------------------------------------------------------------
if [ "${SKIP_OPT:-0}" != 1 ]; then
    say "optimizer case"
    timeout "${OPT_BOX:-90}" "$PY" -m bench --only optimizer --device cuda --warmup 3 --repeats 10 ${OPT_ARGS:-} \
        --json "$OUT/optimizer.json" 2>&1 | grep -v -E 'UserWarning|warnings.warn' | tee "$OUT/optimizer.log"
    say "optimizer case done (exit ${PIPESTATUS[0]})"
fi

# ---- 4. the model case ---------------------------------------------------------------------
if [ "${SKIP_MODEL:-0}" != 1 ]; then
    say "model case"
    VARIANTS=${MODEL_VARIANTS:-sdpa+compile+opt,sdpa+compile}
    timeout "${MODEL_BOX:-130}" "$PY" -m bench --only model --device cuda --warmup 2 --repeats "${MODEL_REPEATS:-5}" \
        --model-variants "$VARIANTS" ${MODEL_MICROBATCH:+--model-microbatch "$MODEL_MICROBATCH"} \
        --json "$OUT/model.json" 2>&1 | grep -v -E 'UserWarning|warnings.warn' | tee "$OUT/model.log"
    say "model case done (exit ${PIPESTATUS[0]}; 124 = stopped at its time limit, the rows printed so far stand)"
fi

# ---- 5. the report: bare step and loop side by side, the waits, the profile, the optimizer rows
if [ -f "$OUT/loop.log" ]; then
    "$PY" -m bench.train_loop report --log "$OUT/loop.log" \
        --model-json "$OUT/model.json" --model-log "$OUT/model.log" --probe-json "$OUT/loop_probe.json" \
        --optimizer-json "$OUT/optimizer.json" --results-dir "${RESULTS_DIR:-bench/results}" \
        --variant "${LOOP_BARE_VARIANT:-sdpa+compile+opt}" | tee "$OUT/loop_report.md"
    RESULT=$(sed -n 's/^wrote //p' "$OUT/loop_report.md" | tail -1)
    [ -n "$RESULT" ] && [ -f "$RESULT" ] && cp "$RESULT" "$OUT/"
fi
# ---- 6. the model step's options (OPTIONS=1) -----------------------------------------------
if [ "${OPTIONS:-0}" = 1 ]; then
    say "model step options"
    timeout 480 "$PY" -m bench --only model --device cuda --warmup 2 --repeats "${MODEL_REPEATS:-5}" \
        --model-variants "${OPTIONS_VARIANTS:-sdpa+compile,triton+compile,hf+compile,sdpa,hf,flex+compile,sdpa+closs,sdpa+cudagraphs,sdpa+autotune}" \
        ${MODEL_MICROBATCH:+--model-microbatch "$MODEL_MICROBATCH"} \
        --json "$OUT/model_options.json" 2>&1 | grep -v -E 'UserWarning|warnings.warn' | tee "$OUT/model_options.log"
    say "model step options done (exit ${PIPESTATUS[0]}; 124 = stopped at its time limit, the rows printed so far stand)"
fi
# ---- 7. scaling (SCALING=1) ----------------------------------------------------------------
if [ "${SCALING:-0}" = 1 ]; then
    say "scaling case"
    timeout 300 "$PY" -m bench --only scaling --device cuda --warmup 1 --repeats 3 ${SCALING_ARGS:-} \
        --json "$OUT/scaling.json" 2>&1 | grep -v -E 'UserWarning|warnings.warn' | tee "$OUT/scaling.log"
    say "scaling case done (exit ${PIPESTATUS[0]}; 124 = stopped at its time limit, the rows printed so far stand)"
fi
rm -rf "$WORK"
say "done; logs and JSON in $OUT"
