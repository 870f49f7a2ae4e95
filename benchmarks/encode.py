"""Encoding throughput: raw text -> window embeddings, against sentence-transformers and a plain forward.

Methods, on the same man-page windows, same process, interleaved round-robin, best of ``--repeat``:

* ``longdoc``: ``WindowEncoder.encode_documents(texts)``: raw documents in, one embedding per window out
  (windowing, token-budget batches, forward, mean pooling, normalisation: everything is timed).
* ``st``: ``SentenceTransformer.encode(window_texts, batch_size=--st-batch-size)`` over the same windows'
  texts (``text[char_start:char_end]``; cutting those texts is *not* timed), ``max_seq_length=512``, built
  from the same weights (Transformer + mean Pooling + Normalize).
* ``hf_forward``: the encoder's ``BertModel`` forward (+ masked mean pooling) on ready batches of
  ``--forward-batch`` windows padded to ``max_length``, already on the device: no tokenization, no copies.

CPU alternatives (``--variants``, MiniLM only by default): ``autocast_bf16`` (fp32 weights under
``torch.autocast("cpu", bfloat16)``), ``int8`` (``torch.ao.quantization.quantize_dynamic`` on every
``nn.Linear``), ``compile`` (``torch.compile`` of the ``BertModel``; compile time reported separately),
``onnx`` (the model + mean pooling exported to ONNX, graph fused by ``onnxruntime.transformers.optimizer``, run
by ONNX Runtime's CPU provider on length-sorted batches of 32 windows padded to the batch's longest; needs
``pip install onnxruntime onnx``, skipped without it). bf16 weights are the ``--dtype bf16`` rows. Every method's embeddings are compared with longdoc fp32 (or the first
dtype run) on the same windows: ``min_cosine`` and ``max_abs_diff``.

Counting. ``tokens`` are window tokens, ``[CLS]``/``[SEP]`` included (the tokens the encoder processes; the
windows overlap, so they exceed the document tokens, reported as ``doc_tokens``); padding is never counted.
FLOPs of one window of T tokens in an encoder with L layers, width d and P non-embedding parameters
(the encoder layers; embeddings and pooler excluded): ``2 * P * T`` (every weight multiplies once and adds
once per token) ``+ 4 * L * T**2 * d`` (QK^T and attention x V: two T x T x d products per layer). This is the
DESIGN.md bound: 790 TFLOP/s -> 4.19M tokens/s (BERT-base) and 30.4M tokens/s (MiniLM) at T = 512.
``cpu_ratio_vs_X`` compares tokens per CPU-second (all threads of this process): on a shared CPU it is the
steadier figure; on a GPU only the wall-clock ratios mean anything. ``pct_of_peak`` is given where ``--peak-tflops`` is (default 790 on CUDA, the H100 bf16 dense figure; none on
CPU, where only the achieved GFLOP/s is reported).

Run: ``python benchmarks/encode.py`` (prints JSON lines; ``--help`` for options).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, interleaved_best, load_corpus, logger, machine, rate, setup_logging  # noqa: E402

DTYPES = ("fp32", "bf16")
VARIANTS = ("autocast_bf16", "int8", "compile", "onnx")


@dataclass
class ModelCase:
    name: str  # "minilm" | "bert-base"
    path: str  # a Hugging Face checkpoint directory (weights + tokenizer)
    target_windows: int


def flops_per_window(model: Any, lengths: np.ndarray) -> float:
    """``sum over windows of 2*P*T + 4*L*T^2*d`` (see the module docstring)."""
    cfg = model.config
    params = sum(p.numel() for p in model.encoder.parameters())
    t = lengths.astype(np.float64)
    return float((2.0 * params * t + 4.0 * cfg.num_hidden_layers * t**2 * cfg.hidden_size).sum())


def build_bert_base(tokenizer_path: str, directory: str, **config: Any) -> str:
    """A ``BertConfig()`` (12 x 768) BertModel with seeded random weights and the MiniLM tokenizer, saved.

    ``config`` overrides ``BertConfig`` fields (e.g. the MiniLM geometry: 6 layers, hidden 384)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, use_fast=True)
    model = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, **config))
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def build_st(path: str, device: str, dtype: Any) -> Any:
    """A SentenceTransformer over the same checkpoint: Transformer(max_seq_length=512) + mean Pooling + Normalize."""
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6 moved the modules
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Normalize, Pooling, Transformer

    transformer = Transformer(path, max_seq_length=512)
    dim = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
    st = SentenceTransformer(modules=[transformer, Pooling(dim(), "mean"), Normalize()], device=device)
    return st.to(dtype=dtype).eval()


def pick_documents(texts: list[str], tokenizer: Any, target_windows: int, docs: int | None) -> list[str]:
    """The first ``docs`` documents; else, in order, the documents that fit into ``target_windows`` windows
    (a document that would overshoot is skipped), so the run stays near its budget whatever the order."""
    from longdoc.windows import make_windows

    if docs is not None:
        return texts[:docs]
    counts = make_windows(texts, tokenizer).documents["n_windows"].to_list()
    picked: list[str] = []
    total = 0
    for text, n in zip(texts, counts, strict=True):
        if n and total + n <= target_windows:
            picked.append(text)
            total += n
        if total >= target_windows:
            break
    return picked or [texts[int(np.argmin([n if n else 1 << 30 for n in counts]))]]


def padded_batches(windows: Any, batch: int, max_length: int, device: Any) -> list[tuple[Any, Any]]:
    """Ready ``(input_ids, attention_mask)`` batches of windows padded to ``max_length``, on the device."""
    import torch

    out = []
    for start in range(0, len(windows), batch):
        rows = range(start, min(len(windows), start + batch))
        ids = torch.zeros((len(rows), max_length), dtype=torch.long)
        mask = torch.zeros((len(rows), max_length), dtype=torch.long)
        for r, i in enumerate(rows):
            w = torch.from_numpy(windows.ids(i).astype(np.int64))
            ids[r, : len(w)] = w
            mask[r, : len(w)] = 1
        out.append((ids.to(device), mask.to(device)))
    return out


def compare(emb: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Minimum cosine and maximum absolute difference between two sets of window embeddings."""
    a = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    b = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    cos = (a * b).sum(axis=1)
    return {
        "min_cosine": round(float(cos.min()), 6),
        "mean_cosine": round(float(cos.mean()), 6),
        "max_abs_diff": float(np.abs(emb - ref).max()),
    }


def onnx_runner(encoder: Any, windows: Any, batch: int = 32) -> Callable[[], np.ndarray] | None:
    """ONNX Runtime (CPU) over the same windows: export, fuse, and a function giving normalised embeddings."""
    try:
        import onnxruntime as ort
        from onnxruntime.transformers import optimizer
    except ImportError:
        emit({"bench": "encode", "figure": "skipped", "what": "onnx variant", "why": "onnxruntime not installed"})
        return None
    import torch

    from longdoc.encoder import pool

    class Pooled(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return pool(self.model(input_ids=ids, attention_mask=mask).last_hidden_state, mask, "mean")

    cfg = encoder.model.config
    directory = Path(tempfile.mkdtemp(prefix="longdoc-onnx-"))
    example = (torch.ones((2, 16), dtype=torch.long), torch.ones((2, 16), dtype=torch.long))
    example[1][1, 8:] = 0  # a padded row, so the mask is not folded away as all ones
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Pooled(encoder.model).eval(), example, str(directory / "model.onnx"),
                          input_names=["ids", "mask"], output_names=["emb"], opset_version=17, dynamo=False,
                          dynamic_axes={"ids": {0: "b", 1: "t"}, "mask": {0: "b", 1: "t"}, "emb": {0: "b"}})
        fused = optimizer.optimize_model(str(directory / "model.onnx"), model_type="bert",
                                         num_heads=cfg.num_attention_heads, hidden_size=cfg.hidden_size)
    fused.save_model_to_file(str(directory / "fused.onnx"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(directory / "fused.onnx"), options, providers=["CPUExecutionProvider"])
    lengths = windows.lengths
    order = np.argsort(-lengths, kind="stable")

    def run() -> np.ndarray:
        out = np.zeros((len(windows), cfg.hidden_size), np.float32)
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            width = int(lengths[rows].max())
            ids = np.zeros((len(rows), width), np.int64)
            mask = np.zeros_like(ids)
            for b, r in enumerate(rows):
                seq = windows.ids(int(r))
                ids[b, : len(seq)] = seq
                mask[b, : len(seq)] = 1
            out[rows] = session.run(None, {"ids": ids, "mask": mask})[0]
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    return run


def run_model(case: ModelCase, args: argparse.Namespace, texts_all: list[str]) -> None:
    import torch

    from longdoc.encoder import WindowEncoder, pool
    from longdoc.windows import WindowConfig, make_windows

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    torch_dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    window = WindowConfig(max_length=512, stride=128)

    encoders: dict[str, Any] = {
        d: WindowEncoder(case.path, device=device, dtype=torch_dtypes[d], window=window) for d in args.dtype
    }
    tokenizer = next(iter(encoders.values())).tokenizer
    texts = pick_documents(texts_all, tokenizer, case.target_windows, args.docs)
    windows = make_windows(texts, tokenizer, window)
    window_texts = windows.texts(texts)
    lengths = windows.lengths
    tokens = int(lengths.sum())
    doc_tokens = int(windows.documents["n_tokens"].sum())
    model0 = next(iter(encoders.values())).model
    flops = flops_per_window(model0, lengths)
    logger.info("%s: %d documents, %d windows, %d window tokens", case.name, len(texts), len(windows), tokens)

    methods: dict[str, Callable[[], np.ndarray]] = {}
    warmups: dict[str, Callable[[], Any]] = {}
    meta: dict[str, dict[str, Any]] = {}
    for d in args.dtype:
        enc = encoders[d]
        st = build_st(case.path, str(device), torch_dtypes[d])
        batches = padded_batches(windows, args.forward_batch, window.max_length, device)

        def run_longdoc(enc: Any = enc) -> np.ndarray:
            return enc.encode_documents(texts, show_progress_bar=False)[1]

        def run_st(st: Any = st) -> np.ndarray:
            return st.encode(
                window_texts, batch_size=args.st_batch_size, show_progress_bar=False, convert_to_numpy=True
            )

        @torch.inference_mode()
        def run_forward(model: Any = enc.model, batches: list = batches) -> np.ndarray:
            out = [
                pool(model(input_ids=i, attention_mask=m).last_hidden_state, m, "mean") for i, m in batches
            ]
            return torch.nn.functional.normalize(torch.cat(out).float(), dim=-1).cpu().numpy()

        for name, fn in (
            (f"longdoc {d}", run_longdoc),
            (f"st {d}", run_st),
            (f"hf_forward {d}", run_forward),
        ):
            methods[name], meta[name] = fn, {"method": name.split()[0], "dtype": d}
        warmups[f"st {d}"] = lambda st=st: st.encode(window_texts[:2], batch_size=2, show_progress_bar=False)
        warmups[f"hf_forward {d}"] = lambda fn=run_forward, b=batches[:1]: fn(batches=b)
        warmups[f"longdoc {d}"] = lambda enc=enc: enc.encode_documents(texts[:1], show_progress_bar=False)

    variants = args.variants if (case.name in args.variants_models and device.type == "cpu") else []
    compile_seconds = None
    if variants:
        base = WindowEncoder(case.path, device=device, dtype=torch.float32, window=window)
        if "autocast_bf16" in variants:

            def run_autocast(enc: Any = base) -> np.ndarray:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return enc.encode_documents(texts, show_progress_bar=False)[1]

            methods["longdoc autocast_bf16"], meta["longdoc autocast_bf16"] = (
                run_autocast,
                {"method": "longdoc", "dtype": "fp32", "variant": "autocast_bf16"},
            )
        if "int8" in variants:
            with warnings.catch_warnings():  # deprecated in favour of torchao, which is not installed here
                warnings.simplefilter("ignore")
                from torch.ao.quantization import quantize_dynamic

                q = WindowEncoder(case.path, device=device, dtype=torch.float32, window=window)
                q.model = quantize_dynamic(q.model, {torch.nn.Linear}, dtype=torch.qint8)
            methods["longdoc int8"], meta["longdoc int8"] = (
                lambda q=q: q.encode_documents(texts, show_progress_bar=False)[1],
                {"method": "longdoc", "dtype": "int8", "variant": "int8_dynamic"},
            )
        if "compile" in variants:
            c = WindowEncoder(case.path, device=device, dtype=torch.float32, window=window)
            c.model = torch.compile(c.model)
            t0 = time.perf_counter()
            for _ in range(2):  # every batch shape compiles here (static first, then dynamic)
                c.encode_documents(texts, show_progress_bar=False)
            compile_seconds = round(time.perf_counter() - t0, 1)
            logger.info("torch.compile warm-up (compilation included): %.1f s", compile_seconds)
            methods["longdoc compile"], meta["longdoc compile"] = (
                lambda c=c: c.encode_documents(texts, show_progress_bar=False)[1],
                {"method": "longdoc", "dtype": "fp32", "variant": "torch_compile"},
            )

        if "onnx" in variants:
            run_onnx = onnx_runner(base, windows)
            if run_onnx is not None:
                methods["onnxruntime fp32"], meta["onnxruntime fp32"] = (
                    run_onnx, {"method": "onnxruntime", "dtype": "fp32", "variant": "onnx_optimized"})

    for name, warm in warmups.items():
        logger.info("warm-up: %s", name)
        warm()
    timed = interleaved_best(methods, repeat=args.repeat, warmup=False, sync=sync)

    ref_name = "longdoc fp32" if "longdoc fp32" in timed else f"longdoc {args.dtype[0]}"
    ref = timed[ref_name]["result"]
    speeds = {  # ratios from wall time, and from CPU time (work; far steadier on a shared machine)
        "": {name: tokens / rec["seconds"] for name, rec in timed.items()},
        "cpu_": {name: tokens / rec["cpu_seconds"] for name, rec in timed.items()},
    }
    for name, rec in timed.items():
        m = meta[name]
        emb = rec["result"]
        if emb.shape != ref.shape:
            raise AssertionError(f"{name}: embeddings {emb.shape}, expected {ref.shape}")
        secs = rec["seconds"]
        record: dict[str, Any] = {
            "bench": "encode",
            "model": case.name,
            "device": device.type,
            **m,
            "docs": len(texts),
            "windows": len(windows),
            "tokens": tokens,
            "doc_tokens": doc_tokens,
            "seconds": secs,
            "all_seconds": rec["all_seconds"],
            "cpu_seconds": rec["cpu_seconds"],
            "tokens_per_s": rate(tokens, secs),
            "tokens_per_cpu_s": rate(tokens, rec["cpu_seconds"]),
            "windows_per_s": rate(len(windows), secs),
            "gflop_per_s": round(flops / secs / 1e9, 2),
        }
        if args.peak_tflops:
            record["peak_tflops"] = args.peak_tflops
            record["pct_of_peak"] = round(100 * flops / secs / (args.peak_tflops * 1e12), 3)
            record["flop_bound_tokens_per_s"] = round(args.peak_tflops * 1e12 * tokens / flops, 0)
        for prefix, speed in speeds.items():
            for peer in ("st", "hf_forward", "longdoc"):
                same = f"{peer} {m['dtype']}"
                if same in speed and same != name:
                    record[f"{prefix}ratio_vs_{peer}"] = round(speed[name] / speed[same], 3)
            for peer in ("st fp32", "longdoc fp32"):
                if peer in speed and peer != name:
                    record[f"{prefix}ratio_vs_{peer.replace(' ', '_')}"] = round(speed[name] / speed[peer], 3)
        if name != ref_name:
            record["vs"] = ref_name
            record.update(compare(emb, ref))
        if m.get("variant") == "torch_compile":
            record["compile_seconds"] = compile_seconds
        emit(record)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda")
    parser.add_argument("--model", choices=["minilm", "bert-base", "both"], default="both")
    parser.add_argument(
        "--dtype", default="auto", help="fp32 | bf16 | fp32,bf16 (auto: bf16 on CUDA, fp32,bf16 on CPU)"
    )
    parser.add_argument(
        "--docs",
        type=int,
        default=None,
        help="man pages to encode (default: enough for --windows-minilm / --windows-bert-base windows)",
    )
    parser.add_argument(
        "--windows-minilm", type=int, default=None, help="target windows (default 48 on CPU, 4096 on CUDA)"
    )
    parser.add_argument(
        "--windows-bert-base", type=int, default=None, help="target windows (default 8 on CPU, 4096 on CUDA)"
    )
    parser.add_argument(
        "--st-batch-size", type=int, default=32, help="SentenceTransformer.encode batch_size (its default)"
    )
    parser.add_argument(
        "--forward-batch", type=int, default=None, help="windows per plain forward batch (16 CPU, 256 CUDA)"
    )
    parser.add_argument(
        "--variants",
        default="auto",
        help=f"CPU alternatives, comma-separated from {','.join(VARIANTS)} or none (auto: all on CPU)",
    )
    parser.add_argument(
        "--variants-models", default="minilm", help="models the variants run on (default minilm)"
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="FLOP bound (default 790 on CUDA, none on CPU)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    setup_logging()

    import torch

    from longdoc.encoder import default_model_path

    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    args.device = "cuda" if cuda else "cpu"
    args.dtype = (["bf16"] if cuda else ["fp32", "bf16"]) if args.dtype == "auto" else args.dtype.split(",")
    if any(d not in DTYPES for d in args.dtype):
        parser.error(f"--dtype must be from {DTYPES}, got {args.dtype}")
    args.variants = (
        ([] if cuda else list(VARIANTS))
        if args.variants == "auto"
        else ([] if args.variants == "none" else args.variants.split(","))
    )
    if any(v not in VARIANTS for v in args.variants):
        parser.error(f"--variants must be from {VARIANTS} or none, got {args.variants}")
    args.variants_models = args.variants_models.split(",")
    args.forward_batch = args.forward_batch or (256 if cuda else 16)
    args.peak_tflops = args.peak_tflops or (790.0 if cuda else None)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

    emit({"bench": "encode", "machine": machine(), "args": vars(args)})
    _, texts = load_corpus("man", docs=args.docs or (2000 if cuda else 400), seed=args.seed)
    rng = np.random.default_rng(args.seed)
    texts = [texts[i] for i in rng.permutation(len(texts))]  # mixed sections, not alphabetical
    minilm = default_model_path()
    with tempfile.TemporaryDirectory(prefix="longdoc-bench-bert-base-") as tmp:
        cases = []
        if args.model in ("minilm", "both"):
            cases.append(ModelCase("minilm", minilm, args.windows_minilm or (4096 if cuda else 48)))
        if args.model in ("bert-base", "both"):
            cases.append(
                ModelCase(
                    "bert-base", build_bert_base(minilm, tmp), args.windows_bert_base or (4096 if cuda else 8)
                )
            )
        for case in cases:
            run_model(case, args, texts)


if __name__ == "__main__":
    main()
