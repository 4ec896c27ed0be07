"""What evaluation sees of a running pipeline: the run's config, its output folder, its roles'
engines and its judge, and nothing else. `rlaif.pipeline.Pipeline` is one; evaluation and the
reports take a `RunContext` rather than reaching into the orchestration layer above them."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from rlaif.backends.base import Engine
from rlaif.config import EngineConfig
from rlaif.constitution import Constitution
from rlaif.judge import Judge
from rlaif.pipeline_config import PipelineConfig


class RunContext(Protocol):
    cfg: PipelineConfig
    out: Path
    overwrite: bool
    constitution: Constitution
    roles: dict[str, EngineConfig]  # policy, critic, judge
    summary: dict  # what the run has done so far (stages, the judge check, ...)
    failed: int  # records that failed for good, over the whole run

    def engine(self, role: str) -> Engine:
        """The engine serving `role`, built on first use."""

    def judge(self, constitution: Constitution | str | None = None, *, stage: bool = False) -> Judge:
        """The run's judge: the judge role's engine, the run's constitution and judge settings."""

    def batch_size(self, role: str) -> int: ...

    def close(self, keep: tuple[str, ...] = ()) -> None:
        """Free the engines' memory, but those in `keep`."""


__all__ = ["RunContext"]
