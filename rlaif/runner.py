"""Resumable execution of one stage over records.

A stage is a pure function `process(batch) -> outputs` (one output record per input, same `id`).
The runner owns everything else, once: skipping ids already written, fixed batches, append+fsync,
failures, the lock on the output folder, the manifest, progress.

Batches are cut from the whole input list, not from what is left, so a resumed run hands the engine
exactly the batches an uninterrupted run would have: with seeded sampling, the output is the same.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

from tqdm.auto import tqdm

from rlaif.config import config_hash
from rlaif.errors import RequestFailed, UserError
from rlaif.manifest import update_manifest
from rlaif.records import FileRecords, append_records, iter_output, read_output, write_jsonl_atomic

FAILURES = "failures.jsonl"
LOCK = ".rlaif.lock"

_held: dict[Path, int] = {}  # out dirs this process has locked -> fd


class OutputLock:
    """An exclusive lock on an output folder for the life of a command (re-entrant per process).
    The OS drops it when the process dies, so a killed run never leaves a stale lock."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir).resolve()
        self.owner = False

    def __enter__(self):
        if self.out_dir in _held:
            return self
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.out_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"{self.out_dir}: cannot create output folder ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{self.out_dir}: another rlaif run (pid {holder}) is writing here; "
                            "wait for it to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _held[self.out_dir] = fd
        self.owner = True
        return self

    def __exit__(self, *exc):
        if self.owner:
            fd = _held.pop(self.out_dir)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


@dataclass
class StageResult:
    stage: str
    path: Path
    records: Sequence[dict]  # every output record of the stage, in input order (a FileRecords over a Reread)
    total: int
    done_before: int
    written: int
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return len(self.failures)


class Executor(Protocol):
    """Runs a stage's batches somewhere other than this process's loop (`rlaif.executors`): the same
    batches, through the same `process`, with the same output file and manifest entry as `run_stage`."""

    def run_stage(self, stage: str, inputs: Iterable[dict], process: Callable[[list[dict]], list[dict]],
                  out_dir: str | Path, **options) -> StageResult: ...

    def close(self) -> None: ...


_current_executor: contextvars.ContextVar[Executor | None] = contextvars.ContextVar("rlaif_executor", default=None)


def current_executor() -> Executor | None:
    """The executor `run_stage` hands its loop to, or None for the local loop."""
    return _current_executor.get()


@contextlib.contextmanager
def executor_in_use(executor: Executor):
    """Inside this block, `run_stage` hands every stage to `executor`."""
    token = _current_executor.set(executor)
    try:
        yield executor
    finally:
        _current_executor.reset(token)


def rewrite_failures(out_dir: Path, stage: str, failures: list[dict]) -> None:
    """failures.jsonl keeps other stages' failures and this stage's from this run only."""
    path = out_dir / FAILURES
    kept = [f for f in read_output(path) if f.get("stage") != stage] if path.exists() else []
    if kept or failures:
        write_jsonl_atomic(path, kept + failures)
    elif path.exists():
        path.unlink()


def run_stage(
    stage: str,
    inputs: Iterable[dict],
    process: Callable[[list[dict]], list[dict]],
    out_dir: str | Path,
    *,
    config: Any,
    batch_size: int = 8,
    output: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    stats: Callable[[], dict] | None = None,
    fixed_batches: bool = True,
    batch_key: Callable[[dict], Any] | None = None,
) -> StageResult:
    """Run `process` over `inputs` (each with an `id`) into `out_dir/output`, resuming.

    `inputs`: a list, or a `Reread` (records made afresh on each pass, e.g. from a file of any
    size). Over a `Reread` the runner holds ids, never records: it reads the inputs twice (their
    ids; then the batches) and hands back the outputs as a `FileRecords` read from the file.

    `batch_key`: cut the batches from the inputs ordered by this key (a stable sort within each
    window of `SORT_WINDOW` records), e.g. their length, so that a padded batch holds records of
    similar length. The order is a function of the inputs alone, so a resumed run still sees the
    same batches. The file then follows that order; the returned records keep the input order.

    `fixed_batches=False`: a partly done batch hands `process` only its missing records. For engines
    whose answers do not depend on what else is in the batch (an HTTP API, one request per record),
    so that a re-run sends only what failed, not the whole batch around it. Such engines are also
    safe to call from several threads, so a failed batch is replayed record by record concurrently.

    Failures are per record: when a request of the batch fails for good (`RequestFailed`: out of
    retries, or refused by the server), the batch is replayed one record per `process` call; the
    engine hands back the answers the batch already got (openai engine), so nothing is sent twice,
    the failing record lands in failures.jsonl with its reason and the others are written."""
    executor = current_executor()
    if executor is not None:  # the same batches through the same `process`, on another executor's workers
        return executor.run_stage(stage, inputs, process, out_dir, config=config, batch_size=batch_size,
                                  output=output, overwrite=overwrite, progress=progress, stats=stats,
                                  fixed_batches=fixed_batches, batch_key=batch_key)
    out_dir = Path(out_dir)
    with OutputLock(out_dir):
        started = time.time()
        path, inputs, ids, done, keep_records = resume(out_dir, stage, output, overwrite, inputs)
        done_before = len(done)
        failures: list[dict] = []
        written = 0
        bar = tqdm(total=len(ids), initial=done_before, desc=stage, unit="rec",
                   disable=not progress, file=sys.stderr, dynamic_ncols=True)
        refused = False  # a UserError before anything was written: leave the folder as it was
        try:
            for _, todo, missing in pending_batches(inputs, batch_size, batch_key, done, fixed_batches):
                outputs = process_batch(stage, todo, process, failures, concurrent=not fixed_batches)
                new = [o for o in outputs if o["id"] not in done and o["id"] in ids]
                append_records(path, new)
                for o in new:
                    done[o["id"]] = o if keep_records else True
                written += len(new)
                bar.update(missing)
        except UserError:
            refused = written == 0 and not failures
            raise
        finally:
            bar.close()
            seconds = time.time() - started
            if not refused:
                rewrite_failures(out_dir, stage, failures)
                update_manifest(out_dir, stage, stage_entry(path, config, len(ids), done_before, written,
                                                            len(failures), len(done), seconds, stats))
        return StageResult(stage, path, finished_records(path, ids, done, keep_records), len(ids), done_before,
                           written, failures, seconds)


SORT_WINDOW = 4096  # records ordered by `batch_key` together: a stream of any length is cut a window at a time


def plan_inputs(inputs: Iterable[dict]) -> tuple[Iterable[dict], dict[str, None], bool]:
    """(the inputs to cut batches from, their ids in order, whether to keep output records): a list
    is deduplicated and its outputs kept in memory; a `Reread` is read once for its ids alone."""
    if iter(inputs) is inputs:
        raise TypeError("run_stage reads its inputs twice: pass a list or a Reread, not an iterator")
    if isinstance(inputs, Sequence):
        inputs = unique_by_id(inputs)
        return inputs, dict.fromkeys(r["id"] for r in inputs), True
    return inputs, dict.fromkeys(r["id"] for r in inputs), False


def resume(out_dir: Path, stage: str, output: str | None, overwrite: bool, inputs: Iterable[dict],
           keep_records: bool | None = None) -> tuple[Path, Iterable[dict], dict[str, None], dict[str, Any], bool]:
    """Inside the output lock, for either executor: the output file (emptied when `overwrite`), the
    inputs and their ids (`plan_inputs`), what is already done, and whether output records are kept
    in memory (`keep_records`: that default, or forced)."""
    path = out_dir / (output or f"{stage}.jsonl")
    if overwrite and path.exists():
        path.unlink()
    inputs, ids, keep = plan_inputs(inputs)
    keep = keep if keep_records is None else keep_records
    return path, inputs, ids, done_outputs(path, ids, keep), keep


def pending_batches(inputs: Iterable[dict], batch_size: int, batch_key, done: dict[str, Any],
                    fixed_batches: bool) -> Iterator[tuple[int, list[dict], int]]:
    """(batch index, what `process` gets, how many records it lacks) for each batch (`cut_batches`)
    with anything not yet in `done`: the whole batch, or with `fixed_batches=False` only what is missing.
    `done` is read as each batch comes, so what the caller adds meanwhile counts."""
    for b, batch in enumerate(cut_batches(inputs, batch_size, batch_key)):
        missing = [r for r in batch if r["id"] not in done]
        if missing:
            yield b, batch if fixed_batches else missing, len(missing)


def done_outputs(path: Path, ids: dict[str, None], keep_records: bool) -> dict[str, Any]:
    """Ids of the inputs already in the output file (with their records when `keep_records`)."""
    return {r["id"]: (r if keep_records else True) for r in iter_output(path) if r.get("id") in ids}


def finished_records(path: Path, ids: dict[str, None], done: dict[str, Any], keep_records: bool) -> Sequence[dict]:
    """The stage's output records in input order: from memory, or read from the file on demand."""
    if keep_records:
        return [done[i] for i in ids if i in done]
    return FileRecords(path, [i for i in ids if i in done])


def cut_batches(inputs: Iterable[dict], batch_size: int, batch_key: Callable[[dict], Any] | None = None,
                window: int | None = None) -> Iterator[list[dict]]:
    """The stage's batches, each id once: the inputs a window at a time (`SORT_WINDOW` records,
    rounded up to whole batches), each window ordered by `batch_key` (stable) and cut into
    `batch_size` pieces. At most a window of inputs is held at once."""
    window = -(-(window or SORT_WINDOW) // batch_size) * batch_size
    seen: set[str] = set()
    buf: list[dict] = []

    def cut():
        order = sorted(buf, key=batch_key) if batch_key else buf
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

    for rec in inputs:
        if rec["id"] in seen:
            continue
        seen.add(rec["id"])
        buf.append(rec)
        if len(buf) == window:
            yield from cut()
            buf = []
    if buf:
        yield from cut()


def unique_by_id(inputs: Sequence[dict]) -> list[dict]:
    """The inputs with each `id` once (its first record), in input order."""
    unique: dict[str, dict] = {}
    for rec in inputs:
        unique.setdefault(rec["id"], rec)
    return list(unique.values())


def stage_entry(path: Path, config: Any, inputs: int, done_before: int, written: int, failed: int, done: int,
                seconds: float, stats: Callable[[], dict] | None = None) -> dict:
    """A stage's manifest entry: what it wrote, from which config, how many records, how long."""
    entry = {
        "output": path.name,
        "config_hash": config_hash(config),
        "config": config.model_dump(mode="json") if hasattr(config, "model_dump") else config,
        "counts": {"inputs": inputs, "done_before": done_before, "written": written, "failed": failed, "done": done},
        "seconds": round(seconds, 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": done == inputs,
    }
    if stats is not None:
        entry["engine"] = stats()
    return entry


def process_batch(stage, batch, process, failures, concurrent: bool = False) -> list[dict]:
    """Run a batch; if a request in it failed for good, run its records one per call (at once, in
    threads, when `concurrent`) so that only the failing ones go to failures.jsonl. Any other error
    (a fatal engine error, a bug) stops the run as before."""
    try:
        return _checked(process(list(batch)), batch)
    except RequestFailed:
        pass

    def one(rec):
        try:
            return _checked(process([rec]), [rec])
        except RequestFailed as e:
            return e

    if concurrent and len(batch) > 1:
        with ThreadPoolExecutor(len(batch), thread_name_prefix=f"rlaif-{stage}") as pool:
            results = list(pool.map(one, batch))  # the first non-RequestFailed error is raised here
    else:
        results = [one(rec) for rec in batch]
    outputs = []
    for rec, result in zip(batch, results):
        if isinstance(result, RequestFailed):
            failures.append({"stage": stage, "id": rec["id"], "reason": result.reason, "attempts": result.attempts})
        else:
            outputs.extend(result)
    return outputs


def _checked(outputs: list[dict], batch: list[dict]) -> list[dict]:
    ids = [o.get("id") for o in outputs]
    if ids != [r["id"] for r in batch]:
        raise RuntimeError("stage returned records that do not match its inputs one to one")
    return outputs


__all__ = ["run_stage", "StageResult", "OutputLock",
           "Executor", "current_executor", "executor_in_use", "process_batch",
           "rewrite_failures"]
