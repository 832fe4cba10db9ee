#!/usr/bin/env bash
# Fetch what bench/gpu_check.sh needs on the GPU image into bench/wheels/ (git-ignored): the
# wheels of Composer 0.32.1 + Streaming 0.13.0 and those of their needs the image lacks, and the
# T5 tokenizer as a saved tokenizer.json directory. Run it here (network to PyPI), then carry
# bench/wheels to the GPU machine, which has no network.
#
# The image (torch 2.11, transformers 5.x, Python 3.12, x86-64) already holds torch, numpy,
# transformers, tokenizers, torchmetrics, lightning-utilities, pyyaml, requests, rich, psutil,
# tabulate, py-cpuinfo, xxhash, sentencepiece, ... (list: .library/device/KINDS.md); the set
# below was found by importing everything a training run imports and keeping the distributions
# the image's list lacks. Wheels are for CPython 3.12 manylinux x86-64 (binary ones: zstd,
# brotli, cramjam, websockets) or pure Python; gpu_check.sh installs them with --no-deps.
# omegaconf 2.4 needs no antlr4 runtime (2.3 did).
#
#   bash bench/fetch_wheels.sh            # then: carry bench/wheels, run bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=bench/wheels
PY=${PYTHON:-python3}
SPIECE=${T5_SPIECE:-../shared/data/tokenizer/t5/spiece.model}
mkdir -p "$DEST"

PACKAGES=(
    mosaicml==0.32.1 mosaicml-streaming==0.13.0 mosaicml-cli==0.7.5
    omegaconf==2.4.0 coolname==2.2.0 catalogue==2.0.10 importlib-metadata==8.9.0 zipp==4.1.2
    torch-optimizer==0.3.0 pytorch-ranger==0.1.1
    'zstd>=1.5.6,<1.6' brotli==1.2.1 python-snappy==0.7.3 cramjam==2.14.0
    argcomplete==3.7.2 arrow==1.4.0 tzdata==2026.6 backoff==2.2.1 gql==3.5.3 graphql-core==3.2.6
    'websockets>=10,<12' prompt-toolkit==3.0.36 questionary==2.0.1 ruamel.yaml==0.19.1
    validators==0.36.0 termcolor==3.3.0 wcwidth==0.9.4
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$DEST" "${PACKAGES[@]}" 2>&1 | grep -v 'is ignored: it is neither' || true
for spec in "${PACKAGES[@]}"; do  # pip's exit status is lost in the pipe: check every package came
    name=$(echo "${spec%%[=<>]*}" | tr 'A-Z-.' 'a-z__')
    ls "$DEST" | tr 'A-Z-.' 'a-z__' | grep -q "^${name}_" || { echo "missing wheel: $spec" >&2; exit 1; }
done

# The T5 tokenizer as tokenizer.json (+ config), without spiece.model: transformers 5.x converts
# a spiece.model wrongly, and loads a saved tokenizer.json as it is.
TOK="$DEST/t5-tokenizer"
if [ -f "$SPIECE" ]; then
    rm -rf "$TOK"
    PYTHONPATH=. "$PY" - "$SPIECE" "$TOK" <<'PY'
import os, sys
from t5composer.tokenization import load_tokenizer
tok = load_tokenizer(sys.argv[1])
tok.save_pretrained(sys.argv[2])
for extra in ('spiece.model',):
    path = os.path.join(sys.argv[2], extra)
    if os.path.exists(path):
        os.remove(path)
print(f'saved the T5 tokenizer ({len(tok)} ids) to {sys.argv[2]}')
PY
else
    echo "no $SPIECE (set T5_SPIECE): gpu_check.sh will train a small tokenizer on the machine instead" >&2
fi

ls -1 "$DEST"
size=$(du -sb "$DEST" | cut -f1)
echo "bench/wheels: $((size / 1024 / 1024)) MiB (the device carries at most 64 MiB in all)"
if [ "$size" -ge $((60 * 1024 * 1024)) ]; then
    echo "too large to carry" >&2
    exit 1
fi
