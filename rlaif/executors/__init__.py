"""Executors: where a stage's batches run.

The local runner (`rlaif.runner.run_stage`) runs every batch in this process. The Ray executor
(`rlaif.executors.ray_data`) runs the same batches, cut the same way, through the same pure
`process(batch)` function, on Ray actors that each hold one engine built from the stage's
`EngineConfig`; the driver keeps the output file, the resume logic and failures.jsonl.

The runner owns the interface (`rlaif.runner.Executor`, and the executor in use for the current
context); the executors here implement it. A command selects one for the stages it runs with
`use_executor(cfg)`; `run_stage` asks `current_executor()` and hands its loop over when one is set.
"""

from __future__ import annotations

import contextlib

from rlaif.config import ExecutorConfig
from rlaif.executors.remote import RemoteEngine, use_fleet_url
from rlaif.runner import current_executor, executor_in_use


@contextlib.contextmanager
def use_executor(cfg: ExecutorConfig | None):
    """Run the stages started inside this block on the executor `cfg` describes (local: unchanged)."""
    if cfg is None or cfg.kind == "local":
        yield None
        return
    from rlaif.executors.ray_data import RayExecutor

    executor = RayExecutor(cfg)
    try:
        with executor_in_use(executor):
            yield executor
    finally:
        executor.close()


__all__ = ["ExecutorConfig", "RemoteEngine", "current_executor", "use_executor", "use_fleet_url"]
