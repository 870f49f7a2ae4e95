"""What the default classifier costs against the window head alone: ``fit`` + ``predict`` from raw text, CPU.

Both runs start from the same documents as text (tokenizing, windowing, encoding included, as a user pays):

* ``default``: ``LongDocClassifier.from_encoder(labels=...)`` + ``fit(train)`` + ``predict(test)``;
* ``windows_only``: the same with ``lexical=False`` and ``TrainConfig(eval_fraction=0)``, the frozen
  hierarchical model as it was before the lexical branch (no validation split, every epoch).

The two alternate ``--reps`` times so that machine noise hits both; the ratio of the medians is the figure.

    python benchmarks/classify_cost.py --corpus bbc --train 400 --test 200 --reps 2
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine, setup_logging  # noqa: E402

from longdoc.classifier import LongDocClassifier  # noqa: E402
from longdoc.training import TrainConfig  # noqa: E402
from longdoc.windows import WindowConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=("bbc", "manpages"), default="bbc")
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--stride", type=int, default=128)
    args = parser.parse_args()
    setup_logging()
    logging.getLogger("longdoc").setLevel(logging.WARNING)
    emit({"bench": "classify_cost", "what": "machine", **machine(), "args": vars(args)})
    if args.corpus == "bbc":
        from longdoc.corpora import load_bbc

        docs = load_bbc()
    else:
        from longdoc.manpages import load_man_pages

        docs = load_man_pages(max_per_section=200, seed=0)
    docs = docs.sample(n=min(docs.height, args.train + args.test), shuffle=True, seed=0)
    train, test = docs.head(args.train), docs.slice(args.train)
    labels = sorted({x for row in docs["labels"].to_list() for x in row})
    window = WindowConfig(args.max_length, args.stride)
    dtype = torch.bfloat16
    seconds: dict[str, list[float]] = {"default": [], "windows_only": []}
    for rep in range(args.reps):
        for name in (("default", "windows_only") if rep % 2 == 0 else ("windows_only", "default")):
            lexical = name == "default"
            t0 = time.perf_counter()
            clf = LongDocClassifier.from_encoder(labels=labels, window=window, dtype=dtype, lexical=lexical)
            clf.fit(train, args=TrainConfig() if lexical else TrainConfig(eval_fraction=0))
            clf.predict(test)
            seconds[name].append(time.perf_counter() - t0)
            emit({"bench": "classify_cost", "what": "run", "method": name, "rep": rep,
                  "seconds": round(seconds[name][-1], 2)})
    median = {k: float(np.median(v)) for k, v in seconds.items()}
    emit({"bench": "classify_cost", "what": "ratio", "corpus": args.corpus, "train": train.height,
          "test": test.height, **{f"{k}_median_s": round(v, 2) for k, v in median.items()},
          "default_over_windows_only": round(median["default"] / median["windows_only"], 3)})


if __name__ == "__main__":
    main()
