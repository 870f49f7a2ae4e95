"""The tiny random BERT of the test suite, as a plain function: the ``tiny_model_dir`` fixture and the GPU
suite's dry run (``benchmarks/gpu_suite.py --dry-run``) build it the same way."""

from __future__ import annotations

import string
from pathlib import Path

_WORDS = """the a an of to and in is it for on with as by at from that this be are was or not no
file files mode bits change user group read write run command option options system call library function
device format page manual news sport tech business politics music film game market bank vote team player
win lost goal data model text window token label document index search query contract report
""".split()


def tiny_vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    subwords = ["##" + c for c in string.ascii_lowercase + string.digits]
    seen: dict[str, None] = {}
    for tok in specials + chars + subwords + _WORDS:
        seen.setdefault(tok, None)
    return list(seen)


def build_tiny_bert(path: str | Path) -> Path:
    """A 2-layer, hidden-32 BERT with a hand-written WordPiece vocab, saved like any HF checkpoint into ``path``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(path / "vocab.txt"), do_lower_case=True)  # transformers >= 5
    if tokenizer.vocab_size != len(vocab):
        tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)  # transformers 4
    assert tokenizer.vocab_size == len(vocab), "the tiny tokenizer must use the hand-written vocab"
    tokenizer.save_pretrained(path)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    BertModel(config).eval().save_pretrained(path, safe_serialization=True)
    return path
