"""A constitution: named principles, each with the three requests the stages ask of a model.

YAML schema (validated; unknown keys are errors):

    name: harmless
    version: "1.0"
    description: ...
    principles:
      - id: no-violence
        critique_request: ...      # asked of a response in SL-CAI
        revision_request: ...      # asked after the critique
        comparison_question: ...   # the labeler's multiple-choice question
        weight: 1.0                # optional, sampling weight
    few_shot:                      # optional exemplars
      - prompt: ...
        response: ...
        critique: ...
        revision: ...
    check_pairs:                   # optional: unambiguous pairs the judge must get right
      - prompt: ...                # the user's message
        better: ...                # the reply any competent reader prefers
        worse: ...
        principle: physical-harm   # optional: judge by this principle's question
        note: ...                  # optional: why `better` is better
"""

from __future__ import annotations

import random
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from rlaif.config import Strict, load_config
from rlaif.resources import resolve


class Principle(Strict):
    id: str = Field(min_length=1)
    critique_request: str = Field(min_length=1)
    revision_request: str = Field(min_length=1)
    comparison_question: str = Field(min_length=1)
    weight: float = Field(1.0, gt=0)


class FewShot(Strict):
    prompt: str = Field(min_length=1)
    response: str = Field(min_length=1)
    critique: str = Field(min_length=1)
    revision: str = Field(min_length=1)
    principle: str | None = None  # id of the principle the exemplar illustrates


class CheckPair(Strict):
    """A pair with a clear answer under this constitution; the judge check asks the judge to pick
    `better` (rlaif/eval/judge_check.py)."""

    prompt: str = Field(min_length=1)  # one user message
    better: str = Field(min_length=1)
    worse: str = Field(min_length=1)
    principle: str | None = None  # id of the principle to judge it by (else the labeler draws one)
    note: str | None = None

    @model_validator(mode="after")
    def _different(self):
        if self.better.strip() == self.worse.strip():
            raise ValueError("better and worse are the same reply")
        return self


class Constitution(Strict):
    name: str = Field(min_length=1)
    version: str
    description: str = Field(min_length=1)
    principles: list[Principle] = Field(min_length=1)
    few_shot: list[FewShot] = Field(default_factory=list)
    check_pairs: list[CheckPair] = Field(default_factory=list)

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, v):
        return str(v) if isinstance(v, (int, float)) else v

    @model_validator(mode="after")
    def _unique_ids(self):
        seen: set[str] = set()
        for i, p in enumerate(self.principles):
            if p.id in seen:
                raise ValueError(f"principles.{i}.id: duplicate principle id {p.id!r}")
            seen.add(p.id)
        for i, ex in enumerate(self.few_shot):
            if ex.principle is not None and ex.principle not in seen:
                raise ValueError(f"few_shot.{i}.principle: {ex.principle!r} is not the id of a principle "
                                 f"in this constitution (ids: {', '.join(sorted(seen))})")
        for i, cp in enumerate(self.check_pairs):
            if cp.principle is not None and cp.principle not in seen:
                raise ValueError(f"check_pairs.{i}.principle: {cp.principle!r} is not the id of a principle "
                                 f"in this constitution (ids: {', '.join(sorted(seen))})")
        return self

    def principle(self, pid: str) -> Principle:
        for p in self.principles:
            if p.id == pid:
                return p
        raise KeyError(pid)

    def exemplars_for(self, principle: Principle, k: int) -> list[FewShot]:
        """Up to k few-shot exemplars for `principle`: those written for it first, then the rest in
        file order (the labeler and the critique stage show the same ones)."""
        own = [ex for ex in self.few_shot if ex.principle == principle.id]
        rest = [ex for ex in self.few_shot if ex.principle != principle.id]
        return (own + rest)[:k]

    def sample_principles(self, rng: random.Random, k: int, repeat: bool = False) -> list[Principle]:
        """Draw k principles by weight; without `repeat`, no principle twice (weighted sampling
        without replacement; falls back to repeats once all principles are used)."""
        chosen: list[Principle] = []
        pool = list(self.principles)
        for _ in range(k):
            if not pool:
                pool = list(self.principles)
            p = rng.choices(pool, weights=[q.weight for q in pool], k=1)[0]
            chosen.append(p)
            if not repeat:
                pool.remove(p)
        return chosen


def load_constitution(name_or_path: str | Path) -> Constitution:
    path = resolve("constitutions", name_or_path)
    return load_config(Constitution, path)


def describe_constitution(c: Constitution, source: str | Path = "") -> str:
    """A one-screen summary: name, version, principles with weights, few-shot and check-pair counts."""
    total = sum(p.weight for p in c.principles)
    lines = [f"{source}: ok" if source else f"{c.name}: ok",
             f"  name: {c.name}   version: {c.version}",
             f"  {c.description}" if len(c.description) <= 96 else f"  {c.description[:93]}...",
             f"  principles: {len(c.principles)} (sampling share by weight)"]
    width = max(len(p.id) for p in c.principles)
    lines += [f"    {p.id:<{width}}  weight {p.weight:g}  ({p.weight / total:.0%})" for p in c.principles]
    linked = sum(1 for ex in c.few_shot if ex.principle)
    lines.append(f"  few-shot exemplars: {len(c.few_shot)}" + (f" ({linked} tied to a principle)" if linked else ""))
    lines.append(f"  check pairs: {len(c.check_pairs)}"
                 + ("" if c.check_pairs else " (the judge check will be skipped)"))
    return "\n".join(lines)


def check_constitutions(paths) -> str:
    """Validate each file (the first bad one raises a UserError naming file and field)."""
    return "\n".join(describe_constitution(load_constitution(p), resolve("constitutions", p)) for p in paths)
