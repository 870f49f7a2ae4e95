"""WindowEncoder: equal to a plain Hugging Face fp32 forward, order and count kept under any batching."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from longdoc.encoder import WindowEncoder, _token_budget_batches
from longdoc.errors import ConfigError, ModelLoadError
from longdoc.windows import WindowConfig

DOCS = [
    "the file mode bits " * 400,  # many full windows
    "",  # no tokens
    "chmod",
    "   \n\t ",  # whitespace only
    "read write run " * 37,
    "index search query " * 1500,
]


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return WindowEncoder(tiny_model_dir, device="cpu", window=WindowConfig(max_length=64, stride=16))


def _reference(model_dir, windows):
    """Plain HF fp32: one window at a time, no padding, mean over tokens, L2-normalised."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir).eval()
    rows = []
    with torch.no_grad():
        for i in range(len(windows)):
            ids = torch.as_tensor(windows.ids(i), dtype=torch.long)[None]
            hidden = model(input_ids=ids).last_hidden_state[0]
            rows.append(torch.nn.functional.normalize(hidden.mean(0), dim=0).numpy())
    return np.stack(rows)


def test_equals_plain_hf_reference(encoder, tiny_model_dir):
    windows, emb = encoder.encode_documents(DOCS)
    assert emb.dtype == np.float32 and emb.shape == (len(windows), encoder.dim)
    ref = _reference(tiny_model_dir, windows)
    assert np.abs(emb - ref).max() < 1e-5
    assert windows.documents["n_windows"].to_list()[1] == 0 and windows.documents["n_windows"].to_list()[3] == 0


@pytest.mark.parametrize("budget", [1, 70, 300, 5000])
def test_order_and_count_kept_for_any_token_budget(tiny_model_dir, encoder, budget):
    windows, expected = encoder.encode_documents(DOCS)
    other = WindowEncoder(tiny_model_dir, device="cpu", window=encoder.window, max_tokens_per_batch=budget)
    again = other.encode_windows(windows)
    assert again.shape == expected.shape
    assert np.abs(again - expected).max() < 1e-5


class _SmallDevice(WindowEncoder):
    """The real tiny encoder on a device that runs out of memory above ``limit`` padded tokens per batch (a CPU
    cannot run out for real: ``embed`` raises CUDA's own error where a small GPU would)."""

    limit = 300

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ooms = 0

    def embed(self, input_ids, attention_mask):
        if input_ids.numel() > self.limit:
            self.ooms += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().embed(input_ids, attention_mask)


def test_a_lowered_token_budget_is_kept_for_the_rest_of_the_call(tiny_model_dir, encoder, caplog):
    docs = ["the file mode bits " * 100, "read write run " * 120] * 3  # 3 groups of 2 documents, ~18 windows each
    small = _SmallDevice(tiny_model_dir, device="cpu", window=encoder.window, max_tokens_per_batch=4096)
    with caplog.at_level("WARNING", logger="longdoc.encoder"):
        windows, emb = small.encode_documents(docs, chunk_size=2)
    # the first group halves 4096 -> 256 tokens (4 out-of-memory errors); the next groups start from 256
    assert small.ooms == 4
    assert [r.getMessage().split("budget to ")[1].split()[0] for r in caplog.records] == ["2048", "1024", "512", "256"]
    assert np.abs(emb - encoder.encode_documents(docs)[1]).max() < 1e-5
    assert windows.documents["doc_id"].to_list() == [str(i) for i in range(6)]
    assert small.max_tokens_per_batch == 4096  # the next call starts from the configured budget again
    small.encode_documents(docs[:2])
    assert small.ooms == 8


def test_documents_in_chunks_keep_ids_and_order(encoder):
    table = pl.DataFrame({"doc_id": [f"d{i}" for i in range(len(DOCS))], "text": DOCS})
    whole_w, whole = encoder.encode_documents(table)
    chunk_w, chunked = encoder.encode_documents(table, chunk_size=2)
    assert whole_w.table.equals(chunk_w.table)
    assert whole_w.documents["doc_id"].to_list() == table["doc_id"].to_list()
    assert np.abs(whole - chunked).max() < 1e-5


def test_query_encode_shapes_and_cls_pooling(tiny_model_dir, encoder):
    one = encoder.encode("file mode")
    many = encoder.encode(["file mode", "index " * 500])  # the long one is truncated to one window
    assert one.shape == (encoder.dim,) and many.shape == (2, encoder.dim)
    assert np.allclose(one, many[0], atol=1e-6)
    cls = WindowEncoder(tiny_model_dir, device="cpu", pooling="cls", normalize=False)
    assert not np.allclose(cls.encode(["file mode"])[0], one)


def test_fingerprint_tracks_weights(tiny_model_dir, encoder):
    same = WindowEncoder(tiny_model_dir, device="cpu")
    assert same.fingerprint == encoder.fingerprint
    with torch.no_grad():
        same.model.embeddings.word_embeddings.weight[5] += 1.0
    same.invalidate_fingerprint()
    assert same.fingerprint != encoder.fingerprint


def test_save_and_reload_gives_identical_embeddings(tmp_path, encoder):
    encoder.save(tmp_path / "enc")
    again = WindowEncoder(tmp_path / "enc", device="cpu", window=encoder.window)
    assert np.array_equal(again.encode(["file mode bits"]), encoder.encode(["file mode bits"]))


def test_token_budget_batches_cover_every_window_once():
    lengths = np.array([5, 512, 3, 512, 100, 7])
    batches = _token_budget_batches(np.arange(6), lengths, max_tokens=600)
    assert sorted(np.concatenate(batches).tolist()) == list(range(6))
    assert all(len(b) * lengths[b].max() <= 600 or len(b) == 1 for b in batches)


def test_bad_arguments(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="pooling"):
        WindowEncoder(tiny_model_dir, pooling="sum")
    with pytest.raises(ConfigError, match="max_length"):
        WindowEncoder(tiny_model_dir, window=WindowConfig(max_length=1024, stride=0))
    with pytest.raises(ModelLoadError, match="could not load"):
        WindowEncoder(tmp_path / "nothing-here")


def test_pickled_weights_are_never_loaded(tiny_model_dir, tmp_path):
    """A checkpoint that only has pytorch_model.bin (a pickle) is refused, never unpickled."""
    import shutil

    target = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, target)
    (target / "model.safetensors").unlink()
    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    import pickle

    (target / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelLoadError):
        WindowEncoder(target, device="cpu")
    assert not sentinel.exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_close_to_fp32(tiny_model_dir):
    cpu = WindowEncoder(tiny_model_dir, device="cpu")
    gpu = WindowEncoder(tiny_model_dir, device="cuda")
    windows, ref = cpu.encode_documents(DOCS)
    got = gpu.encode_windows(windows)
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.999


@pytest.mark.slow
def test_minilm_queries_match_sentence_transformers(minilm_dir):
    from sentence_transformers import SentenceTransformer

    enc = WindowEncoder(minilm_dir, device="cpu")
    st = SentenceTransformer(str(minilm_dir), device="cpu")
    texts = ["change file mode bits", "list directory contents", "the quick brown fox"]
    assert np.abs(enc.encode(texts) - st.encode(texts, normalize_embeddings=True)).max() < 1e-5


def test_bf16_encoder_shares_the_fingerprint_and_saves_float32(tiny_model_dir, tmp_path, encoder):
    from safetensors import safe_open

    bf16 = WindowEncoder(tiny_model_dir, device="cpu", dtype=torch.bfloat16, window=encoder.window)
    assert bf16.fingerprint == encoder.fingerprint
    windows, ref = encoder.encode_documents(DOCS)
    got = bf16.encode_windows(windows)
    assert got.dtype == np.float32 and (got * ref).sum(1).min() > 0.99
    bf16.save(tmp_path / "enc")
    with safe_open(str(tmp_path / "enc" / "model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
    assert next(bf16.model.parameters()).dtype == torch.bfloat16  # still computing in bf16 after saving


def test_prefetch_stops_its_thread_when_closed_early():
    import threading
    import time

    from longdoc.encoder import _prefetch

    def slow():
        for i in range(1000):
            time.sleep(0.005)
            yield i

    gen = _prefetch(slow(), depth=2)
    next(gen)
    gen.close()
    assert not [t for t in threading.enumerate() if t.name == "longdoc-prefetch"]


@pytest.mark.parametrize("device", ["bogus", "cuda:x", 3.5])
def test_a_device_that_is_not_one_is_a_config_error_naming_it(tiny_model_dir, device):
    """torch's own RuntimeError made `longdoc label --device bogus` a load failure (exit 3); it is bad input."""
    with pytest.raises(ConfigError, match=r"device=.* is not a torch device: expected None"):
        WindowEncoder(tiny_model_dir, device=device)
