"""JSONL records: reading inputs strictly, reading outputs tolerantly, ids, atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from rlaif.errors import UserError


def record_id(*parts: Any) -> str:
    """A stable id derived from a record's inputs (prompt, responses, principle, stage config...)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def request_seed(*parts: Any) -> int:
    """A sampling seed for one engine request, derived from its parts as `record_id` is (fits in 31 bits)."""
    return int(record_id(*parts), 16) % (2**31 - 1)


def model_identity(model: str) -> str | None:
    """What tells apart the models trained one after another into the same folder, for the record
    ids of their samples: the hash of the pipeline's done key for a folder it trained (`done.json`:
    the trainer's config and a hash of its data, the same whenever the same training is redone), else
    of the trainer's own `manifest.json`. None for anything else (a hub id, embedded:NAME, a folder
    this package did not write, a file)."""
    folder = Path(model).expanduser()
    for name in ("done.json", "manifest.json"):
        marker = folder / name
        if marker.is_file():
            return hashlib.sha256(marker.read_bytes()).hexdigest()[:16]
    return None


def dumps(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def read_jsonl(path: str | Path, *, allow_empty: bool = False) -> list[dict]:
    """Read an input JSONL file; any bad line is a UserError naming the file and line."""
    records = list(iter_jsonl(path))
    if not records and not allow_empty:
        raise UserError(f"{path}: no records; expected at least one JSON object per line")
    return records


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """`read_jsonl` a line at a time (a file of any size in constant memory); the same errors."""
    return (obj for _, obj in iter_jsonl_numbered(path))


def iter_jsonl_numbered(path: str | Path) -> Iterator[tuple[int, dict]]:
    """`iter_jsonl` with each record's line number."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a directory; expected a JSONL file")
    opener = _open_gz if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno}); "
                                    "expected one JSON object per line") from None
                if not isinstance(obj, dict):
                    raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                yield lineno, obj
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte offset {e.start}); expected UTF-8 JSONL") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None


def _open_gz(path, mode, encoding):
    import gzip

    return gzip.open(path, mode, encoding=encoding)


def read_output(path: Path) -> list[dict]:
    """Read an output file being resumed. A torn last line (a write cut off by a kill) is dropped
    and truncated from the file; damage anywhere else is an error, since it is not ours to repair."""
    return list(iter_output(path))


def iter_output(path: Path) -> Iterator[dict]:
    """`read_output` a line at a time: the same repair of a torn last line, in constant memory."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, "rb") as f:
        good_end = 0  # bytes of whole lines so far
        for lineno, raw in enumerate(f, 1):
            whole = raw.endswith(b"\n")
            if not raw.strip():
                good_end += len(raw)
                continue
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                if all(not rest.strip() for rest in f):  # the last line: a write cut off by a kill
                    with open(path, "r+b") as g:
                        g.truncate(good_end)
                    return
                raise UserError(f"{path}:{lineno}: corrupt line in an existing output; "
                                "rerun with --overwrite to start this stage over") from None
            if not whole:  # complete JSON but no newline yet: keep it, add the newline
                with open(path, "ab") as g:
                    g.write(b"\n")
            good_end += len(raw) + (not whole)
            yield record


class Reread:
    """Records made afresh by `make()` on every pass (a file read again, say), never held whole:
    `run_stage` over one keeps ids, not records, and hands back a `FileRecords`."""

    def __init__(self, make: Callable[[], Iterable[dict]]):
        self.make = make

    def __iter__(self) -> Iterator[dict]:
        return iter(self.make())


class FileRecords(Sequence):
    """A stage's output records in input order, read from its file on demand: the caller holds one
    byte offset per record, not the records."""

    def __init__(self, path: Path, ids: Iterable[str]):
        self.path = Path(path)
        ids = list(ids)
        wanted = set(ids)
        offsets: dict[str, int] = {}
        if self.path.exists():
            with open(self.path, "rb") as f:
                pos = 0
                for line in f:
                    if line.strip():
                        rid = json.loads(line).get("id")
                        if rid in wanted:
                            offsets[rid] = pos  # the last copy, as a dict of the records would keep
                    pos += len(line)
        self._offsets = [offsets[i] for i in ids if i in offsets]

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        with open(self.path, "rb") as f:
            f.seek(self._offsets[k])
            return json.loads(f.readline())

    def __iter__(self) -> Iterator[dict]:
        with open(self.path, "rb") as f:
            for off in self._offsets:
                f.seek(off)
                yield json.loads(f.readline())


def append_records(path: Path, records: Iterable[dict]) -> None:
    """Append whole lines with one write, then fsync, so a kill loses at most this batch."""
    append_lines(path, [dumps(r).encode("utf-8") for r in records])


def append_lines(path: Path, lines: list[bytes]) -> None:
    """`append_records` for lines already serialised (UTF-8 JSON, no newline), e.g. by a worker."""
    blob = b"".join(line + b"\n" for line in lines)
    if not blob:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:  # disk full / file too large: take the partial batch back out
            os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def write_atomic(path: Path, text: str | Iterable[str]) -> None:
    """Write a whole file via a temp file in the same folder and a rename: readers see the old
    file or the new one, never half of either. `text` may be an iterable of pieces, written as they
    come (a large file is never held whole in memory)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if isinstance(text, str):
                f.write(text)
            else:
                f.writelines(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_jsonl_atomic(path: Path, records: Iterable[dict]) -> None:
    write_atomic(path, (dumps(r) + "\n" for r in records))
