"""Crash-safe files: atomic writes, checksummed checkpoints, appended JSON lines, file locks.

Atomic write = write a temporary file in the same directory, ``fsync`` it, ``os.replace`` it
over the target, ``fsync`` the directory. A reader sees the old or the new file, never a part.

Checkpoint file format (one file, so it is replaced atomically as a whole)::

    b"GFVCKPT1\\n" + header JSON + b"\\n" + payload
    header = {"sha256": hex digest of payload, "size": len(payload), "meta": {...}}
    payload = torch.save(obj) bytes

:func:`load_checkpoint` checks magic, size and sha256 *before* unpickling anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gfverify.errors import CheckpointError, GfverifyError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "remove_temporaries",
    "read_json",
    "append_jsonl",
    "read_jsonl",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_meta",
    "file_lock",
    "os_error_line",
    "check_writable",
    "write_or_salvage",
]

CHECKPOINT_MAGIC = b"GFVCKPT1\n"
_TOKEN_BYTES = 6
#: The name :func:`atomic_write_bytes` gives its temporary: ``.<target>.<pid>.<token>.tmp``.
_TEMPORARY = re.compile(rf"^\..+\.(?P<pid>\d+)\.[0-9a-f]{{{2 * _TOKEN_BYTES}}}\.tmp$")
_MAX_HEADER = 1 << 20


def _fsync_dir(directory: Path) -> None:
    """Persist a rename: fsync the directory entry (best effort; not all filesystems allow it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (tmp file in the same dir + fsync + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # os.open with mode 0o666 lets the umask decide permissions (mkstemp would force 0600).
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(_TOKEN_BYTES)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process on this host (signal 0 probes without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # it exists but is not ours / not a pid: leave its file alone
    return True


def remove_temporaries(directory: str | Path) -> list[str]:
    """Delete the temporaries a killed :func:`atomic_write_bytes` left in ``directory``.

    A process killed (SIGKILL, power loss) between creating its temporary and ``os.replace``
    leaves ``.<target>.<pid>.<token>.tmp`` behind; the target itself is intact. A temporary
    whose pid is a live process on this host is kept. Call this while holding the lock that
    serialises writers of ``directory`` (a run's ``lock``): a pid says nothing about writers on
    other hosts. Returns the names removed, sorted.
    """
    removed = []
    for entry in sorted(Path(directory).iterdir()):
        match = _TEMPORARY.match(entry.name)
        if match and entry.is_file() and not _process_alive(int(match.group("pid"))):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry.name)
    return removed


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Atomic text write (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode(encoding))


def _dumps(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(obj, indent=indent, sort_keys=True, default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    item = getattr(obj, "item", None)  # numpy / torch scalars
    if callable(item):
        with contextlib.suppress(Exception):
            return item()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomic JSON write (sorted keys, indent 2; numpy/torch scalars via ``.item()``).

    Non-finite floats are written as ``NaN``/``Infinity`` (Python's JSON dialect) so that a
    diverged run's metrics survive the round trip.
    """
    atomic_write_text(path, _dumps(obj) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    with Path(path).open("r", encoding="utf-8") as fh:
        return json.load(fh)


def append_jsonl(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line: a single ``write`` of the whole line, then flush + fsync.

    A crash can leave at most one incomplete last line, which :func:`read_jsonl` ignores.
    """
    line = _dumps(dict(record), indent=None) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as fh:
        # A previous crash may have left a partial line: start on a fresh line.
        if fh.tell() > 0:
            with path.open("rb") as rh:
                rh.seek(-1, os.SEEK_END)
                if rh.read(1) != b"\n":
                    fh.write(b"\n")
        fh.write(line.encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Complete JSON lines of ``path`` ([] if missing); a truncated or corrupt line is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    out: list[dict[str, Any]] = []
    data = path.read_bytes()
    for raw in data.split(b"\n")[: -1 if not data.endswith(b"\n") else None]:
        if not raw.strip():
            continue
        try:
            out.append(json.loads(raw))
        except json.JSONDecodeError:
            continue
    return out


# --------------------------------------------------------------------------------------------
# writability: fail before the work, never lose finished work to a failed write


def os_error_line(exc: OSError) -> str:
    """One line for an OSError: ``Permission denied: 'runs/x' (errno 13)``."""
    what = exc.strerror or type(exc).__name__
    where = " -> ".join(repr(os.fspath(f)) for f in (exc.filename, exc.filename2) if f)
    return f"{what}: {where}" if where else f"{what} ({exc})"


def _existing_ancestor(path: Path) -> Path:
    here = path
    while not here.exists():
        if here.parent == here:
            break
        here = here.parent
    return here


def check_writable(path: str | Path, *, directory: bool = False, what: str = "output") -> Path:
    """Raise GfverifyError (one line) unless ``path`` can be written, *before* any work.

    ``path`` is a file to be written atomically (``directory=False``: its folder must take a new
    file) or a directory to be created/filled (``directory=True``). Nothing is created: the
    nearest existing ancestor is probed with a temporary file that is removed at once (a probe,
    not ``os.access``, so read-only mounts and root on a read-only file system are caught).
    Returns ``path``.
    """
    path = Path(path)
    folder = path if directory else path.parent
    if path.exists() and not directory and path.is_dir():
        raise GfverifyError(f"{what} {path} is a directory, not a file")
    if folder.exists() and not folder.is_dir():
        raise GfverifyError(f"{what} {path}: {folder} is a file, not a directory")
    base = _existing_ancestor(folder)
    if not base.is_dir():
        raise GfverifyError(f"{what} {path}: {base} is a file, not a directory")
    probe = base / f".gfverify-probe.{os.getpid()}.{secrets.token_hex(_TOKEN_BYTES)}.tmp"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        missing = "" if base == folder else f" (to create {folder})"
        raise GfverifyError(
            f"cannot write {what} {path}: {base} is not writable{missing}: "
            f"{exc.strerror or type(exc).__name__}"
        ) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return path  # (an existing read-only file is fine: the atomic write replaces it)


def write_or_salvage(path: str | Path, text: str, *, what: str = "output") -> Path:
    """Atomically write ``text`` to ``path``; if that fails, write it to a fresh file in the
    temporary directory instead and raise GfverifyError naming both (the work is not lost).

    Returns ``path`` on success.
    """
    import tempfile

    path = Path(path)
    try:
        atomic_write_text(path, text)
        return path
    except OSError as exc:
        reason = os_error_line(exc)
    fd, spare = tempfile.mkstemp(prefix=f"gfverify-{path.stem}-", suffix=path.suffix or ".txt")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    raise GfverifyError(f"could not write {what} {path} ({reason}); it was saved to {spare}")


# --------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(path: str | Path, obj: Any, meta: Mapping[str, Any] | None = None) -> None:
    """``torch.save(obj)`` into a checksummed single-file checkpoint, written atomically.

    ``meta`` (small, JSON-serialisable) is stored in the header and readable without
    unpickling (:func:`read_checkpoint_meta`).
    """
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    header = {
        "sha256": hashlib.sha256(payload).hexdigest(),
        "size": len(payload),
        "meta": dict(meta or {}),
    }
    head = json.dumps(header, sort_keys=True, default=_json_default).encode("utf-8")
    atomic_write_bytes(path, CHECKPOINT_MAGIC + head + b"\n" + payload)


def _verified_payload(path: Path) -> tuple[dict[str, Any], bytes]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    if not data.startswith(CHECKPOINT_MAGIC):
        raise CheckpointError(f"checkpoint {path} is not a gfverify checkpoint (bad magic)")
    end = data.find(b"\n", len(CHECKPOINT_MAGIC), len(CHECKPOINT_MAGIC) + _MAX_HEADER)
    if end < 0:
        raise CheckpointError(f"checkpoint {path} is truncated (no complete header)")
    try:
        header = json.loads(data[len(CHECKPOINT_MAGIC) : end])
        digest, size = str(header["sha256"]), int(header["size"])
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint {path} has a corrupt header") from None
    payload = data[end + 1 :]
    if len(payload) != size:
        raise CheckpointError(
            f"checkpoint {path} is truncated or padded: payload {len(payload)} bytes,"
            f" header says {size}"
        )
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(f"checkpoint {path} failed its sha256 check (corrupt)")
    return header, payload


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The ``meta`` dict of a checkpoint, after verifying size and sha256 of the payload."""
    header, _ = _verified_payload(Path(path))
    meta = header.get("meta", {})
    return dict(meta) if isinstance(meta, dict) else {}


def load_checkpoint(
    path: str | Path, *, map_location: Any = "cpu", weights_only: bool = True
) -> Any:
    """Verify magic, size and sha256, then ``torch.load`` the payload.

    ``weights_only=True`` (default) refuses arbitrary pickled objects: store tensors, numbers,
    strings and containers of them (e.g. ``torch.get_rng_state()``, not numpy RNG state). Any
    failure is a one-line :class:`CheckpointError`.
    """
    import torch

    path = Path(path)
    _, payload = _verified_payload(path)
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=weights_only)
    except Exception as exc:  # noqa: BLE001 - unpickling errors have many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        hint = " (weights_only=True refuses this object)" if weights_only else ""
        raise CheckpointError(
            f"checkpoint {path} could not be loaded{hint}: {type(exc).__name__}: {first[:200]}"
        ) from None


# --------------------------------------------------------------------------------------------
# locks


@contextlib.contextmanager
def file_lock(path: str | Path, *, blocking: bool = True) -> Iterator[bool]:
    """Exclusive advisory lock on ``path`` (``fcntl.flock``), held for the ``with`` block.

    Yields True when held. With ``blocking=False`` it yields False at once if another open file
    (this process or another) holds it. The OS releases the lock if the holder dies. The lock
    file is never deleted (deleting lock files races). On NFS, flock needs a Linux client
    >= 2.6.12; Lustre needs the ``flock`` mount option.
    """
    try:
        import fcntl
    except ModuleNotFoundError:  # pragma: no cover - Windows
        raise GfverifyError("file locks need fcntl (POSIX); run on Linux or macOS") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            held = True
        except BlockingIOError:
            held = False
        if held:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.uname().nodename} {os.getpid()}\n".encode())
        try:
            yield held
        finally:
            if held:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
