"""Reliability of the index directory: crashes, corruption, full disks, concurrent writers and readers,
hostile files, and a stateful model check of add/upsert/remove/save/load."""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import indexer.backend
import indexer.storage
from indexer import IndexInputError, IndexLoadError, IndexLockedError, PassageIndex

ROOT = Path(__file__).resolve().parents[1]
DIM = 16


def make(n: int, *, seed: int = 0, prefix: str = "d") -> tuple[np.ndarray, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, DIM)).astype(np.float32)
    table = pl.DataFrame({
        "doc_id": [f"{prefix}{i // 3}" for i in range(n)],
        "window_index": [i % 3 for i in range(n)],
        "char_start": [0] * n,
        "char_end": [1] * n,
        "text": ["x"] * n,
    })
    return X, table


def python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def popen(code: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


def self_check(index: PassageIndex) -> None:
    assert index.ntotal == len(index) == index.passages.height


# -- crashes ---------------------------------------------------------------------------------------------------
SAVER = """
import sys, numpy as np, polars as pl
from indexer import PassageIndex
target = sys.argv[1]
versions = []
for n in (300, 600, 900):
    rng = np.random.default_rng(n)
    table = pl.DataFrame({"doc_id": [f"d{i}" for i in range(n)], "window_index": [0] * n,
                          "char_start": [0] * n, "char_end": [1] * n, "text": ["x"] * n})
    versions.append(PassageIndex.build(rng.standard_normal((n, 64)).astype(np.float32), table))
print("ready", flush=True)
i = 0
while True:
    versions[i % 3].save(target)
    versions[i % 3].close()  # three objects take turns holding the directory's writer lock
    i += 1
"""


@pytest.mark.slow
def test_sigkill_during_save_always_leaves_a_loadable_index(tmp_path):
    rng = random.Random(0)
    targets = [tmp_path / "a" / "ix", tmp_path / "b" / "ix"]
    for target in targets:
        X, table = make(30)
        first = PassageIndex.build(np.pad(X, ((0, 0), (0, 48))), table)
        first.save(target)
        first.close()
    started = time.monotonic()
    interrupted = 0
    for _ in range(10):  # 2 x 10 kills, two children at a time
        children = [popen(SAVER, str(t)) for t in targets]
        for child in children:
            assert child.stdout.readline().strip() == "ready", child.stderr.read()
        time.sleep(rng.uniform(0.0, 0.12))
        for child in children:
            time.sleep(rng.uniform(0.0, 0.01))
            child.send_signal(signal.SIGKILL)
        for child in children:
            child.wait(timeout=30)
            assert child.returncode == -signal.SIGKILL, child.stderr.read()[-2000:]  # alive and saving until killed
            child.stdout.close()
            child.stderr.close()
        for target in targets:
            interrupted += any(".tmp-" in name for name in leftovers(target))
            loaded = PassageIndex.load(target)
            assert len(loaded) in {30, 300, 600, 900}
            self_check(loaded)
            probe = loaded.passages.head(1)
            assert len(loaded.search(np.ones(64, np.float32), k=1, per_doc=None)) == 1 and probe.height == 1
    assert interrupted >= 5, f"only {interrupted} of 20 kills landed inside a save"
    # the lock died with the killed writer; the next save clears the debris of interrupted saves
    for target in targets:
        survivor = PassageIndex.load(target, lock=True)
        survivor.save(target)
        survivor.close()
        assert leftovers(target) == []
    assert time.monotonic() - started < 60


def _corrupt_variants(base: Path, work: Path) -> dict[str, tuple[Path, str]]:
    """name -> (directory, the part its error must name)."""
    variants: dict[str, tuple[Path, str]] = {}

    def variant(name: str, part: str) -> Path:
        target = work / name
        shutil.copytree(base, target)
        variants[name] = (target, part)
        return target

    def edit_bytes(path: Path, fn) -> None:
        data = bytearray(path.read_bytes())
        path.write_bytes(bytes(fn(data)))

    def flip(data: bytearray) -> bytearray:
        data[len(data) // 2] ^= 0x10
        return data

    for part in ("faiss.index", "passages.parquet"):
        stem = part.split(".")[0]
        edit_bytes(variant(f"truncated-{stem}", part) / part, lambda d: d[: len(d) // 2])
        edit_bytes(variant(f"flipped-{stem}", part) / part, flip)
        edit_bytes(variant(f"empty-{stem}", part) / part, lambda d: b"")
        (variant(f"missing-{stem}", part) / part).unlink()
        # the checksum was updated too (a buggy writer): the parsers must still fail cleanly
        target = variant(f"truncated-rehashed-{stem}", part)
        edit_bytes(target / part, lambda d: d[: len(d) // 3])
        manifest = json.loads((target / "manifest.json").read_text())
        import hashlib

        manifest["checksums"][part] = hashlib.sha256((target / part).read_bytes()).hexdigest()
        (target / "manifest.json").write_text(json.dumps(manifest))
    edit_bytes(variant("truncated-manifest", "manifest.json") / "manifest.json", lambda d: d[: len(d) // 2])
    edit_bytes(variant("flipped-manifest", "manifest.json") / "manifest.json", lambda d: d.replace(b'"dim": 16', b'"dim": 17'))
    (variant("binary-manifest", "manifest.json") / "manifest.json").write_bytes(os.urandom(200))
    (variant("list-manifest", "manifest.json") / "manifest.json").write_text("[1, 2]")
    target = variant("count-manifest", "count")
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["count"] += 1
    manifest["next_row_id"] += 1
    (target / "manifest.json").write_text(json.dumps(manifest))
    target = variant("future-manifest", "format_version")
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["format_version"] = 99
    (target / "manifest.json").write_text(json.dumps(manifest))
    return variants


LOADER = """
import json, sys
from indexer import IndexLoadError, PassageIndex
out = {}
for path in sys.argv[1:]:
    try:
        PassageIndex.load(path)
        out[path] = "loaded"
    except IndexLoadError as exc:
        out[path] = "IndexLoadError: " + str(exc)
    except Exception as exc:
        out[path] = "OTHER " + type(exc).__name__ + ": " + str(exc)
print(json.dumps(out))
"""


def test_corrupt_parts_give_index_load_error_in_a_clean_process(tmp_path):
    X, table = make(60)
    index = PassageIndex.build(X, table)
    index.save(tmp_path / "base")
    index.close()
    variants = _corrupt_variants(tmp_path / "base", tmp_path / "variants")
    result = python(LOADER, *(str(p) for p, _ in variants.values()))
    assert result.returncode == 0, result.stderr[-2000:]  # no crash, no abort
    outcome = json.loads(result.stdout)
    for name, (path, part) in variants.items():
        message = outcome[str(path)]
        assert message.startswith("IndexLoadError"), (name, message)
        assert part in message, (name, message)


@pytest.mark.parametrize(("column", "value"), [("char_end", -5), ("char_start", -1), ("window_index", -2)])
def test_a_stored_passage_with_an_impossible_span_is_refused_at_load(tmp_path, column, value):
    """What add refuses (0 <= char_start <= char_end, window_index >= 0) is refused at load, naming the passage,
    even when the checksums were rewritten to match."""
    import hashlib

    X, table = make(10)
    with PassageIndex.build(X, table) as index:
        index.save(tmp_path / "i")
    parquet = tmp_path / "i" / "passages.parquet"
    stored = pl.read_parquet(parquet)
    row = 3
    stored = stored.with_columns(pl.when(pl.int_range(pl.len()) == row).then(pl.lit(value, dtype=pl.Int64))
                                 .otherwise(pl.col(column)).alias(column))
    stored.write_parquet(parquet)
    manifest = json.loads((tmp_path / "i" / "manifest.json").read_text())
    manifest["checksums"]["passages.parquet"] = hashlib.sha256(parquet.read_bytes()).hexdigest()
    (tmp_path / "i" / "manifest.json").write_text(json.dumps(manifest))
    bad = stored.row(row, named=True)
    with pytest.raises(IndexLoadError, match="passages.parquet") as info:
        PassageIndex.load(tmp_path / "i")
    message = str(info.value)
    assert f"doc_id={bad['doc_id']!r} window_index={bad['window_index']}" in message
    assert f"char_start={bad['char_start']}, char_end={bad['char_end']}" in message


def test_parts_mixed_from_two_saves_are_refused(tmp_path):
    a, b = PassageIndex.build(*make(30)), PassageIndex.build(*make(45, seed=1))
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    for part in ("faiss.index", "passages.parquet"):
        mixed = tmp_path / f"mixed-{part}"
        shutil.copytree(tmp_path / "a", mixed)
        shutil.copy(tmp_path / "b" / part, mixed / part)
        with pytest.raises(IndexLoadError, match=f"{part} does not match the checksum"):
            PassageIndex.load(mixed)
    mixed = tmp_path / "mixed-manifest"
    shutil.copytree(tmp_path / "a", mixed)
    shutil.copy(tmp_path / "b" / "manifest.json", mixed / "manifest.json")
    with pytest.raises(IndexLoadError, match="does not match the checksum"):
        PassageIndex.load(mixed)
    a.close()
    b.close()


# -- full disk --------------------------------------------------------------------------------------------------
def _full_disk_after_half(real):
    def failing(index_or_fd, target, *args):
        real(index_or_fd, target, *args)
        path = Path(target)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    return failing


@pytest.mark.parametrize("part", ["faiss.index", "passages.parquet", "manifest.json"])
def test_disk_full_during_save_keeps_the_old_index(tmp_path, monkeypatch, part):
    target = tmp_path / "ix"
    index = PassageIndex.build(*make(30))
    index.save(target)
    index.add(*make(9, seed=2, prefix="new"))
    if part == "faiss.index":
        monkeypatch.setattr(indexer.backend, "write_index", _full_disk_after_half(indexer.backend.write_index))
    elif part == "passages.parquet":
        real = pl.DataFrame.write_parquet

        def failing(self, file, *args, **kwargs):
            real(self, file, *args, **kwargs)
            Path(file).write_bytes(Path(file).read_bytes()[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(pl.DataFrame, "write_parquet", failing)
    else:
        real_write = indexer.storage._write_all

        def failing(fd, data):
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(indexer.storage, "_write_all", failing)
    with pytest.raises(OSError) as caught:
        index.save(target)
    assert caught.value.errno == errno.ENOSPC
    assert leftovers(target) == []  # the temporary directory is gone
    old = PassageIndex.load(target)
    assert len(old) == 30
    self_check(old)
    monkeypatch.undo()
    index.save(target)  # the disk has room again
    assert len(PassageIndex.load(target)) == 39
    index.close()


# -- concurrent writers and readers ---------------------------------------------------------------------------------
TRY_SAVE = """
import sys, numpy as np, polars as pl
from indexer import IndexLockedError, PassageIndex
table = pl.DataFrame({"doc_id": ["c"], "window_index": [0], "char_start": [0], "char_end": [1], "text": ["x"]})
index = PassageIndex.build(np.ones((1, 16), np.float32), table)
try:
    index.save(sys.argv[1])
    print("saved", flush=True)
except IndexLockedError as exc:
    print("locked:", exc, flush=True)
    sys.exit(0)
if len(sys.argv) > 2:  # hold the lock until killed
    print("holding", flush=True)
    import time
    time.sleep(60)
"""


def test_second_writer_process_is_locked_out_until_release_or_death(tmp_path):
    target = tmp_path / "ix"
    holder = PassageIndex.build(*make(6))
    holder.save(target)
    result = python(TRY_SAVE, str(target))
    assert f"locked: index at {target} is locked by pid {os.getpid()}" in result.stdout, result.stderr
    holder.close()
    assert python(TRY_SAVE, str(target)).stdout.strip() == "saved"
    # a writer that dies holding the lock releases it
    child = popen(TRY_SAVE, str(target), "hold")
    assert child.stdout.readline().strip() == "saved"
    assert child.stdout.readline().strip() == "holding"
    with pytest.raises(IndexLockedError, match=f"locked by pid {child.pid}"):
        holder.save(target)
    assert len(PassageIndex.load(target)) == 1  # readers are never locked out
    child.kill()
    child.wait(timeout=10)
    child.stdout.close()
    child.stderr.close()
    holder.save(target)
    assert len(PassageIndex.load(target)) == 6
    holder.close()


def _signature(hits) -> list[tuple[str, int, float]]:
    return [(h.doc_id, h.window_index, round(h.score, 5)) for h in hits]


def test_readers_see_the_old_or_the_new_version_while_a_writer_saves(tmp_path):
    target = tmp_path / "ix"
    versions = [PassageIndex.build(*make(90, seed=1, prefix="a")), PassageIndex.build(*make(150, seed=2, prefix="b"))]
    queries = np.random.default_rng(9).standard_normal((4, DIM)).astype(np.float32)
    expected = [[_signature(r) for r in v.search(queries, k=5)] for v in versions]
    versions[0].save(target)
    versions[0].close()
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                loaded = PassageIndex.load(target)
                got = [_signature(r) for r in loaded.search(queries, k=5)]
                assert got in expected, "a reader saw a mix of two versions"
                assert len(loaded) == (90 if got == expected[0] else 150)
                seen.append(expected.index(got))
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    def searcher() -> None:  # searches on the object that is saving
        try:
            mine = [_signature(r) for r in versions[1].search(queries, k=5)]
            while not stop.is_set():
                assert [_signature(r) for r in versions[1].search(queries, k=5)] == mine
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)] + [threading.Thread(target=searcher)]
    for thread in threads:
        thread.start()
    for i in range(400):  # until the readers have seen both versions, and at least 40 saves
        writer = versions[(i + 1) % 2]
        writer.save(target)
        writer.close()
        if i >= 40 and set(seen) == {0, 1}:
            break
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors[0]
    assert set(seen) == {0, 1}
    assert leftovers(target) == []


def test_fallback_swap_without_renameat2(tmp_path, monkeypatch):
    monkeypatch.setattr(indexer.storage, "_renameat2", None)
    target = tmp_path / "ix"
    index = PassageIndex.build(*make(12))
    index.save(target)
    index.add(*make(3, prefix="z"))
    index.save(target)
    assert len(PassageIndex.load(target)) == 15 and leftovers(target) == []
    # a crash between the two renames: the path is gone, the old copy sits beside it
    os.rename(target, target.parent / ".ix.old-deadbeef")
    index.save(target)  # the writer restores and replaces it
    assert len(PassageIndex.load(target)) == 15 and leftovers(target) == []
    index.close()


# -- hostile directories -----------------------------------------------------------------------------------------------
class _Sentinel:
    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickles_are_never_unpickled(tmp_path):
    target = tmp_path / "ix"
    index = PassageIndex.build(*make(9))
    index.save(target)
    index.close()
    sentinel = tmp_path / "UNPICKLED"
    _Sentinel.path = str(sentinel)
    payload = pickle.dumps(_Sentinel())
    for name in ("passages.pkl", "faiss.pkl", "index.pt", "model.pkl", "bm25.pkl"):
        (target / name).write_bytes(payload)
    assert len(PassageIndex.load(target)) == 9  # extra files are ignored, not read
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["checksums"]["index.pkl"] = "0" * 64
    (target / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexLoadError, match="unexpected file 'index.pkl'"):
        PassageIndex.load(target)
    # data files replaced by pickles (checksums made to match): refused by faiss / parquet readers
    import hashlib

    for part in ("faiss.index", "passages.parquet"):
        hostile = tmp_path / f"hostile-{part}"
        shutil.copytree(tmp_path / "ix", hostile)
        manifest = json.loads((hostile / "manifest.json").read_text())
        del manifest["checksums"]["index.pkl"]
        (hostile / part).write_bytes(payload)
        manifest["checksums"][part] = hashlib.sha256(payload).hexdigest()
        (hostile / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(IndexLoadError, match=part):
            PassageIndex.load(hostile)
    assert not sentinel.exists()


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "faiss.index/../../x", "sub/faiss.index", ""])
def test_manifest_cannot_name_other_paths(tmp_path, name):
    target = tmp_path / "ix"
    index = PassageIndex.build(*make(6))
    index.save(target)
    index.close()
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["checksums"][name] = manifest["checksums"]["faiss.index"]
    (target / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexLoadError, match="unexpected file"):
        PassageIndex.load(target)


@pytest.mark.parametrize("part", ["faiss.index", "passages.parquet", "manifest.json"])
def test_symlinked_parts_are_refused(tmp_path, part):
    target = tmp_path / "ix"
    index = PassageIndex.build(*make(6))
    index.save(target)
    index.close()
    outside = tmp_path / f"outside-{part}"
    shutil.move(target / part, outside)  # identical bytes, so the checksum would even match
    (target / part).symlink_to(outside)
    with pytest.raises(IndexLoadError, match=f"{part} is a symbolic link"):
        PassageIndex.load(target)
    (target / part).unlink()
    (target / part).mkdir()
    with pytest.raises(IndexLoadError, match=f"{part} is not a regular file"):
        PassageIndex.load(target)


# -- a stateful model check ------------------------------------------------------------------------------------------------
DOCS = [f"doc{i}" for i in range(8)]


class IndexMachine(RuleBasedStateMachine):
    """PassageIndex against a plain dict {doc_id: {window_index: vector}}."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="index-machine-"))
        self.index = PassageIndex(DIM)
        self.model: dict[str, dict[int, np.ndarray]] = {}

    def teardown(self) -> None:
        self.index.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _windows(self, doc: str, n: int, seed: int) -> tuple[np.ndarray, pl.DataFrame, dict[int, np.ndarray]]:
        # distinct documents never share vectors, so "every vector finds itself" is well defined
        X = np.random.default_rng([seed, DOCS.index(doc)]).standard_normal((n, DIM)).astype(np.float32)
        table = pl.DataFrame({"doc_id": [doc] * n, "window_index": list(range(n)), "char_start": [0] * n,
                              "char_end": [0] * n, "text": [""] * n})
        return X, table, {w: X[w] for w in range(n)}

    @rule(doc=st.sampled_from(DOCS), n=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
    def add(self, doc: str, n: int, seed: int) -> None:
        X, table, windows = self._windows(doc, n, seed)
        if doc in self.model:
            with pytest.raises(IndexInputError, match="already in the index"):
                self.index.add(X, table)
            return
        self.index.add(X, table)
        self.model[doc] = windows

    @rule(doc=st.sampled_from(DOCS), n=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
    def upsert(self, doc: str, n: int, seed: int) -> None:
        X, table, windows = self._windows(doc, n, seed)
        self.index.upsert(X, table)
        self.model[doc] = windows

    @rule(docs=st.lists(st.sampled_from(DOCS), max_size=3))
    def remove(self, docs: list[str]) -> None:
        expected = sum(len(self.model.pop(d, {})) for d in set(docs))
        assert self.index.remove(doc_ids=docs) == expected

    @rule(mmap=st.booleans())
    def save_and_load(self, mmap: bool) -> None:
        self.index.save(self.dir / "ix")
        self.index.close()
        self.index = PassageIndex.load(self.dir / "ix", mmap=mmap)

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert len(self.index) == self.index.ntotal == sum(len(w) for w in self.model.values())
        assert self.index.doc_ids == sorted(self.model)
        keys = [(d, w) for d, windows in self.model.items() for w in windows]
        if not keys:
            assert self.index.search(np.ones(DIM, np.float32), k=3) == []
            return
        queries = np.stack([self.model[d][w] for d, w in keys])
        found = self.index.search(queries, k=1, per_doc=None)
        assert [(r[0].doc_id, r[0].window_index) for r in found] == keys


TestIndexMachine = IndexMachine.TestCase
TestIndexMachine.settings = settings(max_examples=25, stateful_step_count=12, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])
