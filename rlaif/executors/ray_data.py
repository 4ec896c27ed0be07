"""The Ray executor: a stage's batches on Ray Data actors, each holding one engine.

What stays as in `rlaif.runner.run_stage` (and is reused from it): the batches are cut by
`cut_batches` (the stage's `batch_key` order, a window at a time), so a resumed run hands the engine
the same batches; each batch goes through the stage's own `process(batch)`, inside the runner's
`process_batch`, so a request that fails for good lands in failures.jsonl and the rest of its
batch is kept; finished batches are appended with fsync in batch order; the manifest entry has the
same fields. The output file is therefore the bytes a local run writes.

What Ray Data adds: the pending batches become rows of a dataset (one runner batch per row, the
records pickled), put in the object store a block at a time as they are cut, so the driver holds
ids and block references, not records (over a `Reread` it never holds the inputs at all); `map_batches` over an actor pool (`concurrency=actors`), each actor unpickling
`process` once, with its `RemoteEngine` loading the engine from the EngineConfig on first use
(transformers on CPU, vllm with a GPU per actor, openai for a fleet of servers); `preserve_order`
so results stream back in batch order and are written as they come (the driver keeps ids, not
records). Ray Data restarts a dead actor and retries its task (`max_restarts=-1`,
`max_task_retries=-1` are its defaults for actor pools), so a killed worker costs a retried batch,
and since the driver writes a batch only once, in order, nothing is lost or written twice.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from rlaif.config import ExecutorConfig
from rlaif.errors import UserError
from rlaif.executors.remote import use_fleet_url
from rlaif.records import append_lines, dumps
from rlaif.runner import (OutputLock, StageResult, finished_records, pending_batches, process_batch, resume,
                          rewrite_failures, stage_entry, update_manifest)

RAY_EXTRA = "rlaif-kit[ray]"


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (ray without the data extra has no ray.data)
    except ImportError:
        raise UserError(f"--executor ray needs Ray Data, which is not installed; install the extra: "
                        f"pip install '{RAY_EXTRA}'") from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Ray's own connect retries for a minute or more on a dead address; a plain TCP connect says
    it at once."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray-address {address}: expected HOST:PORT (the head's GCS port, 6379) or "
                        "ray://HOST:PORT (Ray Client, 10001)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise UserError(f"--ray-address {address}: cannot reach the Ray cluster ({e.strerror or e}); "
                        "start it with `ray start --head` or fix the address") from None


class RayExecutor:
    kind = "ray"

    def __init__(self, cfg: ExecutorConfig):
        self.cfg = cfg
        self.ray = import_ray()
        self.started_here = False
        if not self.ray.is_initialized():
            if cfg.address:
                _check_reachable(cfg.address)
            try:
                self.ray.init(address=cfg.address, logging_level=logging.WARNING, log_to_driver=False,
                              include_dashboard=False,
                              **({} if cfg.address else {"num_cpus": max(os.cpu_count() or 1, 1)}))
            except ConnectionError as e:
                raise UserError(f"--ray-address {cfg.address}: cannot connect to a Ray cluster ({e})") from None
            self.started_here = True
        logging.getLogger("ray.data").setLevel(logging.WARNING)

    def close(self) -> None:
        if self.started_here and self.ray.is_initialized():
            self.ray.shutdown()

    def run_stage(self, stage: str, inputs, process: Callable, out_dir, *, config: Any,
                  batch_size: int = 8, output: str | None = None, overwrite: bool = False,
                  progress: bool = True, stats=None, fixed_batches: bool = True, batch_key=None):
        out_dir = Path(out_dir)
        with OutputLock(out_dir):
            started = time.time()
            # the driver keeps ids, never records
            path, inputs, ids, done, _ = resume(out_dir, stage, output, overwrite, inputs, keep_records=False)
            done_before = len(done)
            pending = ((b, todo) for b, todo, _ in pending_batches(inputs, batch_size, batch_key, done, fixed_batches))

            failures: list[dict] = []
            written = 0
            try:
                per_block = batches_per_block(len(ids) - done_before, batch_size, self.cfg)
                for b, out_ids, blob, fails in self._results(stage, pending, process, fixed_batches, progress,
                                                             per_block):
                    failures.extend(fails)
                    keep = [k for k, rid in enumerate(out_ids) if rid not in done and rid in ids]
                    lines = blob.split(b"\n")[:-1]
                    append_lines(path, [lines[k] for k in keep])
                    for k in keep:
                        done[out_ids[k]] = True
                    written += len(keep)
            finally:
                seconds = time.time() - started
                rewrite_failures(out_dir, stage, failures)
                entry = stage_entry(path, config, len(ids), done_before, written, len(failures), len(done),
                                    seconds, stats)
                update_manifest(out_dir, stage, {**entry, "executor": self.cfg.model_dump(mode="json")})
            return StageResult(stage, path, finished_records(path, ids, done, keep_records=False), len(ids),
                               done_before, written, failures, seconds)

    def _results(self, stage, pending: Iterator[tuple], process, fixed_batches, progress,
                 per_block: int) -> Iterator[tuple]:
        """Stream (batch index, ids, output lines, failures) back in batch order. The pending
        batches go to the object store a block at a time as they are cut (Ray spills blocks to disk
        past its memory), so the driver holds block references, not records."""
        from ray import cloudpickle
        import pyarrow as pa
        from ray.data import DataContext

        ray, cfg = self.ray, self.cfg
        ctx = DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        refs, n_batches, chunk = [], 0, []

        def put(chunk):
            table = pa.table({"b": pa.array([b for b, _ in chunk], pa.int64()),
                              "batch": pa.array([pickle.dumps(batch, protocol=5) for _, batch in chunk], pa.binary())})
            refs.append(ray.put(table))

        for item in pending:
            chunk.append(item)
            n_batches += 1
            if len(chunk) == per_block:
                put(chunk)
                chunk = []
        if chunk:
            put(chunk)
        if not refs:
            return
        ds = ray.data.from_arrow_refs(refs)
        refs.clear()  # the dataset holds the blocks now
        threads = max(1, int(cfg.cpus_per_actor))
        fleet = {"fleet": cfg.base_urls, "ranks": ray.remote(num_cpus=0)(Ranks).remote()} if cfg.base_urls else {}
        ds = ds.map_batches(
            StageActor, batch_size=1, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=cfg.actors),
            num_cpus=cfg.cpus_per_actor, **({"num_gpus": cfg.gpus_per_actor} if cfg.gpus_per_actor else {}),
            fn_constructor_kwargs={"payload": cloudpickle.dumps(process), "stage": stage,
                                   "concurrent": not fixed_batches, "threads": threads, **fleet})
        from tqdm.auto import tqdm

        bar = tqdm(total=n_batches, desc=f"{stage} (ray)", unit="batch", disable=not progress, file=sys.stderr, dynamic_ncols=True)
        try:
            for row in ds.iter_rows():
                bar.update(1)
                yield (row["b"], row["ids"].decode().split("\n") if row["ids"] else [], row["lines"],
                       pickle.loads(row["failures"]))
        except Exception as e:  # an error inside an actor: a UserError stays one line, the rest propagate
            user = _find_user_error(e)
            if user is not None:
                raise UserError(str(user)) from None
            raise
        finally:
            bar.close()


def batches_per_block(records: int, batch_size: int, cfg: ExecutorConfig) -> int:
    """Runner batches per Ray Data block (one task): at most `block_records` records (Ray Data keeps
    per-block state on the driver), and at least 4 blocks per actor, so a short run is shared out."""
    fair = -(-records // (4 * cfg.actors))
    return max(1, min(cfg.block_records, fair) // batch_size)


class StageActor:
    """One Ray Data actor: the stage's `process` (its engine loads on first use) over runner batches."""

    def __init__(self, payload: bytes, stage: str, concurrent: bool, threads: int, fleet: list[str] | None = None,
                 ranks=None):
        import ray
        from ray import cloudpickle

        if "torch" in sys.modules:  # the engine's threads: one per CPU the actor was given
            sys.modules["torch"].set_num_threads(threads)
        else:
            os.environ["OMP_NUM_THREADS"] = str(threads)
        if fleet:  # each actor takes the next rank; a restarted actor a new one, so the servers stay shared
            use_fleet_url(fleet[ray.get(ranks.take.remote()) % len(fleet)])
        self.process = cloudpickle.loads(payload)
        self.stage = stage
        self.concurrent = concurrent

    def __call__(self, table):
        import pyarrow as pa

        out = {"b": [], "ids": [], "lines": [], "failures": []}
        for b, blob in zip(table.column("b").to_pylist(), table.column("batch").to_pylist()):
            batch = pickle.loads(blob)
            failures: list[dict] = []
            outputs = process_batch(self.stage, batch, self.process, failures, concurrent=self.concurrent)
            out["b"].append(b)
            out["ids"].append("\n".join(o["id"] for o in outputs).encode())
            out["lines"].append("".join(dumps(o) + "\n" for o in outputs).encode("utf-8"))
            out["failures"].append(pickle.dumps(failures))
        return pa.table({"b": pa.array(out["b"], pa.int64()), "ids": pa.array(out["ids"], pa.binary()),
                         "lines": pa.array(out["lines"], pa.binary()),
                         "failures": pa.array(out["failures"], pa.binary())})


class Ranks:
    """A counter the actors of one stage draw their rank from (a Ray actor of its own, no CPU)."""

    def __init__(self):
        self.next = 0

    def take(self) -> int:
        self.next += 1
        return self.next - 1


def _find_user_error(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, UserError):
            return e
        cause = getattr(e, "cause", None)
        e = cause if isinstance(cause, BaseException) else (e.__cause__ or e.__context__)
    return None


__all__ = ["RayExecutor", "StageActor", "import_ray"]
