"""Crash-safe writes (the one durable-write recipe of the project) and index directories: atomic save,
checksummed load, one-writer lock.

The recipe, for every file or directory anything here or in ``longdoc`` writes durably:

- ``durable_directory(target)`` (a context manager): write the files into the temporary directory it yields; on
  success everything is fsynced and swapped into place at ``target`` (then the parent fsynced), on failure the
  temporary directory is removed. Indexes, sharded indexes, models and training checkpoints use it.
- ``write_file_atomically(path, write)`` / ``write_bytes_atomically(path, data)``: one file, written through
  ``write(tmp)`` on a temporary sibling (``.<name>.tmp-<pid>-<random>``), fsynced, renamed over ``path``, the
  parent fsynced; the temporary file is removed on failure. Label parts, the labels metadata, the man-page cache
  and vector exports use it.

An index save writes every file into a temporary sibling directory (``.<name>.tmp-<pid>-<random>``), fsyncs the files and
the directory, then swaps it with the live directory in one step (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere
two renames, with the old copy kept as ``.<name>.old-<random>`` until the new one is in place). A crash at any
moment leaves either the old or the new directory at the path, never a mix.

Load opens the directory once and reads every file through that handle (``O_NOFOLLOW``: a symlinked file is
refused), so a save that swaps the directory meanwhile cannot hand a reader parts of two versions. File names
are a fixed set; names inside the manifest are compared against that set and never joined to a path.

The writer lock is ``<name>.lock`` beside the directory, so it survives the swap; ``fcntl.flock`` releases it
when its holder closes it or dies. Taking it restores a previous version that a writer which died between the
fallback's two renames left as ``.<name>.old-...`` (``recover_stale``), so the next writer updates that version
instead of starting a new directory.

A target that is a symbolic link (``out -> real``) is resolved first: the directory is written, swapped and locked
at the link's target, and the link stays a link (a save never turns the link into a directory or strands it).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from indexer.errors import IndexInputError, IndexLoadError, IndexLockedError

__all__ = [
    "DATA_FILES",
    "MANIFEST",
    "DirectoryLock",
    "Snapshot",
    "atomic_save",
    "commit_directory",
    "durable_directory",
    "index_directory",
    "open_snapshot",
    "recover_stale",
    "replace_directory",
    "start_directory",
    "swap_in_progress",
    "wait_for_swap",
    "write_bytes_atomically",
    "write_file_atomically",
    "write_manifest",
]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
#: The data files of an index directory, in the order they are written. Nothing else is ever read.
DATA_FILES = ("faiss.index", "passages.parquet")
_CHUNK = 1 << 20
_MAX_MANIFEST_BYTES = 1 << 20
_T = TypeVar("_T")


# -- small file helpers -------------------------------------------------------------------------------
def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (a module function so tests can simulate a full disk)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view[:_CHUNK])
        view = view[written:]


def _write_new_file(path: Path, data: bytes) -> None:
    """Create ``path`` (it must not exist), write ``data`` through ``_write_all`` and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary_name(target: Path) -> Path:
    """A fresh temporary sibling of ``target`` (``recover_stale`` and readers recognise the ``.tmp-`` prefix)."""
    return target.parent / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def _resolved(target: str | os.PathLike[str]) -> Path:
    """``target`` absolute, symbolic links resolved: a directory written through a link (``out -> real``) is
    written, swapped and locked at the link's target (the link stays a link), never half at each."""
    return Path(os.path.realpath(target))


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_fd(fd: int) -> str:
    digest = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, _CHUNK):
        digest.update(chunk)
    os.lseek(fd, 0, os.SEEK_SET)
    return digest.hexdigest()


def _sha256_file(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return _sha256_fd(fd)
    finally:
        os.close(fd)


# -- the directory swap -----------------------------------------------------------------------------------
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _load_renameat2() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        func = libc.renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_renameat2 = _load_renameat2()


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories; False when the platform or file system cannot."""
    if _renameat2 is None:
        return False
    rc = _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, f"renameat2(RENAME_EXCHANGE) {a} <-> {b}: {os.strerror(err)}")


def _swap_into_place(tmp: Path, target: Path) -> None:
    if not os.path.lexists(target):
        os.rename(tmp, target)
        return
    if target.is_dir() and not any(target.iterdir()):
        os.rename(tmp, target)  # replacing an empty directory is atomic
        return
    if _exchange(tmp, target):
        shutil.rmtree(tmp)  # tmp now holds the previous version
        return
    # Fallback: two renames. Between them the path is briefly absent; readers retry and recover_stale()
    # brings the old copy back if we die right there.
    old = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
    os.rename(target, old)
    _fsync_path(target.parent, directory=True)
    os.rename(tmp, target)
    _fsync_path(target.parent, directory=True)
    shutil.rmtree(old, ignore_errors=True)


def replace_directory(tmp: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Make the fully written directory ``tmp`` appear at ``target`` in one step, durably.

    Every file under ``tmp`` and ``tmp`` itself are fsynced first; then ``tmp`` is swapped into place
    (an atomic exchange where the kernel offers one) and the parent directory fsynced. A crash leaves either
    the old or the new directory at ``target``. Call ``recover_stale(target)`` before creating ``tmp`` (named
    ``.<target name>.tmp-...`` beside ``target``): it clears what an interrupted save left and brings the old
    copy back after the rare two-rename fallback. Used for indexes, models and checkpoints.
    """
    tmp, target = Path(os.path.abspath(tmp)), _resolved(target)
    for path in sorted(tmp.rglob("*"), reverse=True):
        if path.is_file() and not path.is_symlink():
            _fsync_path(path)
        elif path.is_dir():
            _fsync_path(path, directory=True)
    _fsync_path(tmp, directory=True)
    _swap_into_place(tmp, target)
    _fsync_path(target.parent, directory=True)


def _stale_siblings(target: Path) -> list[Path]:
    prefixes = (f".{target.name}.tmp-", f".{target.name}.old-")
    try:
        return [p for p in target.parent.iterdir() if p.name.startswith(prefixes)]
    except FileNotFoundError:
        return []


def recover_stale(target: Path) -> None:
    """With the lock held: restore an old copy left by a crash mid-fallback-swap, drop leftover temp dirs."""
    stale = _stale_siblings(target)
    if not os.path.lexists(target):
        olds = sorted((p for p in stale if ".old-" in p.name), key=lambda p: p.stat().st_mtime)
        if olds:
            logger.warning("restoring %s from %s, left by an interrupted save", target, olds[-1])
            os.rename(olds[-1], target)
            stale.remove(olds[-1])
    for path in stale:
        logger.info("removing %s, left by an interrupted save", path)
        shutil.rmtree(path, ignore_errors=True)


def swap_in_progress(target: str | os.PathLike[str]) -> bool:
    """Whether ``target`` is absent while a previous version waits beside it (``.<name>.old-...``): a fallback
    swap is between its two renames, or its writer died there (the next writer's lock restores it)."""
    path = _resolved(target)
    return not os.path.lexists(path) and any(".old-" in p.name for p in _stale_siblings(path))


#: How many times, ``SWAP_POLL_SECONDS`` apart, a reader looks again for a directory a fallback swap has moved away.
SWAP_POLL_ATTEMPTS, SWAP_POLL_SECONDS = 20, 0.01


def wait_for_swap(target: str | os.PathLike[str], *, attempts: int = SWAP_POLL_ATTEMPTS) -> bool:
    """While ``target`` is mid-swap (:func:`swap_in_progress`), wait for the swap's second rename, as
    :func:`open_snapshot` does (at most ``attempts`` polls); returns whether ``target`` exists now. For readers
    that read a file of the directory by its path (a manifest) rather than through a snapshot."""
    for _ in range(attempts):
        if not swap_in_progress(target):
            break
        time.sleep(SWAP_POLL_SECONDS)
    return os.path.lexists(_resolved(target))


def _new_temporary_directory(target: Path, mode: int) -> Path:
    """Clear what an interrupted save of ``target`` left and make an empty temporary sibling to write into."""
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_stale(target)
    tmp = _temporary_name(target)
    os.mkdir(tmp, mode)
    return tmp


@contextlib.contextmanager
def durable_directory(
    target: str | os.PathLike[str],
    *,
    check: Callable[[Path], None] | None = None,
    mode: int = 0o777,
) -> Iterator[Path]:
    """Write a directory durably and atomically: ``with durable_directory(target) as tmp:`` write the files into
    ``tmp``; when the block succeeds every file and ``tmp`` are fsynced and ``tmp`` is swapped into place at
    ``target`` (``replace_directory``), when it raises ``tmp`` is removed and ``target`` is left as it was.

    ``check(target)`` (absolute) runs first and may refuse the target. What an interrupted save left beside
    ``target`` is cleared first (``recover_stale``); the caller holds whatever lock keeps other writers of
    ``target`` away. ``mode`` is the new directory's mode (before the umask).
    """
    target = _resolved(target)
    if check is not None:
        check(target)
    tmp = _new_temporary_directory(target, mode)
    try:
        yield tmp
        replace_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_file_atomically(path: str | os.PathLike[str], write: Callable[[Path], _T]) -> _T:
    """Write the file ``path`` durably and atomically: ``write(tmp)`` creates a temporary sibling, which is
    fsynced and renamed over ``path``, then the parent directory is fsynced. Returns what ``write`` returned.

    A crash leaves the previous ``path`` (or none) and at most a ``.<name>.tmp-...`` sibling; any failure removes
    the temporary file and leaves ``path`` as it was. The parent directory must exist.
    """
    path = Path(os.path.abspath(path))
    tmp = _temporary_name(path)
    try:
        result = write(tmp)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_path(path.parent, directory=True)
    return result


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes) -> None:
    """``write_file_atomically`` for bytes already in memory."""
    write_file_atomically(path, lambda tmp: _write_new_file(tmp, data))


def _refuse_non_index(target: Path) -> None:
    if os.path.lexists(target):
        if not target.is_dir():
            raise IndexInputError(f"directory={str(target)!r} exists and is not a directory")
        if any(target.iterdir()) and not (target / MANIFEST).is_file():
            raise IndexInputError(
                f"directory={str(target)!r} exists, is not empty and holds no {MANIFEST}: refusing to replace "
                "a directory that is not an index; choose a new or empty directory"
            )


def write_manifest(tmp: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` as ``tmp/manifest.json`` (sorted, indented JSON), fsynced: the last file of an index."""
    _write_new_file(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))


@contextlib.contextmanager
def index_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """``durable_directory`` for an index directory: refuses (``IndexInputError``) a ``target`` that is not a
    directory, or that is a non-empty directory holding no ``manifest.json`` (never replace what is not an
    index). The caller holds the directory's lock and writes ``manifest.json`` last (``write_manifest``)."""
    with durable_directory(target, check=_refuse_non_index) as tmp:
        yield tmp


def start_directory(target: Path) -> Path:
    """A new empty temporary sibling of ``target`` to write the next version of the index directory into.

    For builders that cannot use ``index_directory``'s ``with`` block. The caller holds the directory's lock.
    Refuses (``IndexInputError``) a ``target`` that is not a directory, or that is a non-empty directory holding
    no ``manifest.json`` (never replace what is not an index); clears what an interrupted save left
    (``recover_stale``). Finish with ``commit_directory``; on failure remove the temporary directory.
    """
    target = _resolved(target)
    _refuse_non_index(target)
    return _new_temporary_directory(target, 0o777)


def commit_directory(tmp: Path, target: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` as ``tmp/manifest.json`` (sorted, indented JSON), then fsync every file and ``tmp``,
    swap ``tmp`` into place at ``target`` and fsync the parent (``replace_directory``): the last step of a save
    begun with ``start_directory``."""
    write_manifest(tmp, manifest)
    replace_directory(tmp, target)


def atomic_save(
    target: Path,
    writers: Mapping[str, Callable[[Path], None]],
    manifest: dict[str, Any],
) -> dict[str, str]:
    """Write ``writers`` (name -> function writing that file) and ``manifest.json`` atomically at ``target``.

    The caller holds the directory's lock. Returns the sha256 checksums that went into the manifest.
    """
    checksums: dict[str, str] = {}
    with index_directory(target) as tmp:
        for name, write in writers.items():
            path = tmp / name
            write(path)
            checksums[name] = _sha256_file(path)
        body = dict(manifest)
        body["checksums"] = checksums
        write_manifest(tmp, body)
    return checksums


# -- reading ---------------------------------------------------------------------------------------------
@dataclass
class Snapshot:
    """One consistent version of an index directory: the manifest and open handles on its data files."""

    path: Path
    manifest: dict[str, Any]
    fds: dict[str, int] = field(default_factory=dict)

    def fd_path(self, name: str) -> str:
        """A path that opens exactly the file this snapshot holds (``/proc/self/fd/N`` on Linux)."""
        proc = f"/proc/self/fd/{self.fds[name]}"
        return proc if os.path.exists(proc) else str(self.path / name)

    def read_bytes(self, name: str) -> bytes:
        fd = self.fds[name]
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)

    def verify(self, name: str) -> None:
        """Raise IndexLoadError unless the open file matches the manifest's sha256."""
        self._compare(name, _sha256_fd(self.fds[name]))

    def verify_bytes(self, name: str, data: bytes) -> None:
        """Raise IndexLoadError unless ``data`` (the file's content, already read) matches the manifest."""
        self._compare(name, hashlib.sha256(data).hexdigest())

    def _compare(self, name: str, actual: str) -> None:
        expected = self.manifest["checksums"][name]
        if actual != expected:
            raise IndexLoadError(
                f"index at {self.path}: {name} does not match the checksum in {MANIFEST} "
                f"(expected sha256 {expected[:12]}..., found {actual[:12]}...): the file is corrupt or comes "
                "from a different save"
            )

    def close(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_regular(dir_fd: int, name: str, where: Path) -> int:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise IndexLoadError(f"index at {where}: {name} is a symbolic link; refusing to follow it") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IndexLoadError(f"index at {where}: {name} is not a regular file")
    return fd


def _parse_manifest(raw: bytes, where: Path, validate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexLoadError(f"index at {where}: {MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise IndexLoadError(f"index at {where}: {MANIFEST} must hold a JSON object, found {type(manifest).__name__}")
    checksums = manifest.get("checksums")
    if not isinstance(checksums, dict):
        raise IndexLoadError(f"index at {where}: {MANIFEST} has no 'checksums' object")
    for name in checksums:
        if name not in DATA_FILES:
            raise IndexLoadError(
                f"index at {where}: {MANIFEST} names unexpected file {name!r}; an index holds only {list(DATA_FILES)}"
            )
    for name in DATA_FILES:
        value = checksums.get(name)
        if not isinstance(value, str) or len(value) != 64:
            raise IndexLoadError(f"index at {where}: {MANIFEST} has no sha256 checksum for {name}")
    validate(manifest)
    return manifest


def open_snapshot(
    path: Path, validate: Callable[[dict[str, Any]], None], *, attempts: int = SWAP_POLL_ATTEMPTS
) -> Snapshot:
    """Open one consistent version of the index directory at ``path``.

    ``validate(manifest)`` raises ``IndexLoadError`` for a manifest this version cannot read. A save that swaps
    the directory while we open it is retried (the directory handle pins one version once it is open).
    """
    path = Path(os.path.abspath(path))
    for attempt in range(attempts):
        try:
            dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            if attempt + 1 < attempts and _stale_siblings(path):
                time.sleep(SWAP_POLL_SECONDS)  # a fallback swap is between its two renames
                continue
            raise IndexLoadError(f"no index at {path}: the directory does not exist") from None
        except NotADirectoryError:
            raise IndexLoadError(f"no index at {path}: not a directory") from None
        snapshot = Snapshot(path, {})
        try:
            fd = _open_regular(dir_fd, MANIFEST, path)
            try:
                raw = os.read(fd, _MAX_MANIFEST_BYTES + 1)
            finally:
                os.close(fd)
            if len(raw) > _MAX_MANIFEST_BYTES:
                raise IndexLoadError(f"index at {path}: {MANIFEST} is larger than {_MAX_MANIFEST_BYTES} bytes")
            snapshot.manifest = _parse_manifest(raw, path, validate)
            for name in DATA_FILES:
                snapshot.fds[name] = _open_regular(dir_fd, name, path)
            return snapshot
        except FileNotFoundError as exc:
            snapshot.close()
            swapped = _inode(path) != os.fstat(dir_fd).st_ino
            if swapped and attempt + 1 < attempts:
                continue  # the version we opened was replaced and removed under us: open the new one
            missing = os.path.basename(exc.filename or "") or "a file"
            raise IndexLoadError(f"index at {path} is incomplete: {missing} is missing") from None
        except BaseException:
            snapshot.close()
            raise
        finally:
            os.close(dir_fd)
    raise IndexLoadError(f"index at {path} kept changing while it was being opened ({attempts} attempts)")


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


# -- the writer lock -------------------------------------------------------------------------------------------
class DirectoryLock:
    """An exclusive, non-blocking ``flock`` on ``<directory>.lock`` beside the index directory.

    ``what`` names the directory in the error (``"index"``, ``"labels directory"``); ``hint`` says what to do
    (default: the advice for a ``PassageIndex``)."""

    def __init__(self, directory: str | os.PathLike[str], *, what: str = "index", hint: str | None = None) -> None:
        self._fd: int | None = None
        target = _resolved(directory)
        self.directory = target
        self.path = target.parent / f"{target.name}.lock"
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            finally:
                os.close(fd)
            if hint is None:
                hint = ("close() the other PassageIndex or wait for that process, or load without lock=True to "
                        "read only")
            raise IndexLockedError(
                f"{what} at {target} is locked by pid {holder} (lock file {self.path}): another writer is using it; "
                f"{hint}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        # The lock is ours: a writer that died between the two renames of the fallback swap left the directory
        # absent and its previous version as ``.<name>.old-...``: bring it back now, before this writer looks at
        # the directory (it would otherwise start a new one and replace the previous version).
        try:
            recover_stale(target)
        except BaseException:
            self.release()
            raise

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __del__(self) -> None:
        self.release()
