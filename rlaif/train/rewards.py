"""Reward functions for online RL (PPO, GRPO): the judge's direct score, a pairwise judge reward
inside a group of replies, trained reward models, and Python rules — and their weighted sum.

Every reward here scores replies `y` to prompts `x`:

- `judge_direct`: the judge's probability-weighted 1–10 score, normalised to [0, 1]
  (`Judge.score_many`): one question per prompt, so the replies of one group are read on one scale.
- `judge_pairwise`: inside the group of G replies to a prompt, each reply y_i against every other
  y_j (`against: group`) or against one fixed reference reply y_ref (`against: reference`), shown
  in both orders, soft (the labeler's p(a ≻ b) from the option log-probabilities):

      R_i = 1/(G−1) · Σ_{j≠i} p(y_i ≻ y_j)        or        R_i = p(y_i ≻ y_ref)

  A pair is judged once for (i, j) and gives p(y_j ≻ y_i) = 1 − p(y_i ≻ y_j). The question is drawn
  per prompt, so a group's pairs are asked the same one (`Judge.group_rewards_many`).
- `model`: a reward model spec, `rm:DIR`, `ensemble:...` or `combined:FILE` (`reward_fn_from_spec`).
- `rule`: a Python function `module:function`, `f(prompts, responses) -> list[float]`, for what can
  be checked by code (length, format). `rlaif.train.rewards:brevity` is one that ships.

The total is R = Σ_k w_k · R_k. Judges are engines (rlaif/backends): on a server (vLLM, any
OpenAI-compatible endpoint) the requests of a whole batch go out concurrently while the policy
trains here. Failures are per record: when a request fails for good (`RequestFailed`), the batch
is replayed a unit at a time (a reply, or a pair), concurrently where the engine allows it, and the
units that still fail get `None` — never a silent 0 — with their reason kept for the log; a reply
with any weighted reward `None` has no total, and the trainer leaves it out of the loss and out of
its group's baseline.
"""

from __future__ import annotations

import importlib
import math
from typing import Callable, Literal, Sequence

from pydantic import Field, field_validator, model_validator

from rlaif.config import Strict
from rlaif.errors import UserError
from rlaif.judge import Judge, JudgeConfig

Messages = list[dict]
RewardFn = Callable[[Sequence[Messages | str], Sequence[str]], Sequence[float]]

# ---------------------------------------------------------------- the judge's direct score (d-RLAIF)


def direct_reward(judge: Judge):
    """`reward_fn(prompts, responses) -> [0, 1] scores` from a judge (direct RLAIF);
    `reward_fn.detailed(prompts, responses)` gives each score with its principles."""

    def detailed(prompts, responses):
        return [{"score": s.value, "principles": s.principles, "scores": s.scores, "distributions": s.distributions,
                 "floored": s.floored} for s in judge.score_many(prompts, responses)]

    def reward_fn(prompts, responses):
        return [s.value for s in judge.score_many(prompts, responses)]

    reward_fn.detailed = detailed
    reward_fn.engine = judge.engine
    reward_fn.judge = judge
    return reward_fn


def judge_from_spec(model_spec: str, constitution: str | None = None, config: JudgeConfig | None = None) -> Judge:
    """A judge on a model spec (its engine loaded once). Default constitution: harmless."""
    from rlaif.backends import load_engine
    from rlaif.config import parse_model_spec

    return Judge(load_engine(parse_model_spec(model_spec)), constitution or "harmless", config)


# ---------------------------------------------------------------- reward specs (rm:, labeler:direct, ...)

REWARD_SPECS = ("rm:DIR (a saved reward model), judge:direct (or labeler:direct), combined:FILE.yaml (helpful + harmless RMs, "
                "rlaif combine-rm) or ensemble:DIR|DIR1,DIR2,...,calibration=FILE[,lambda_std=L|,min]")


def reward_fn_from_spec(spec: str, *, judge: str, constitution: str | None = None,
                        device="cpu", batch_size: int = 16, max_length: int = 512, prompt_records=None) -> RewardFn:
    """`rm:DIR` -> a saved reward model; `labeler:direct` -> the direct 1–10 score of the judge on
    model spec `judge`;
    `combined:FILE` -> helpful and harmless RMs by the Llama 2 rule (`prompt_records`, the prompt
    file's records, say which prompts are flagged unsafe); `ensemble:...` -> a conservative RM ensemble."""
    from rlaif.train.models import resolve

    kind, _, arg = spec.partition(":")
    if kind == "rm" and arg:
        from rlaif.train.reward_model import RewardScorer

        return RewardScorer(resolve(arg), device=device, batch_size=batch_size, max_length=max_length)
    if kind == "combined" and arg:
        from rlaif.train.reward_combine import CombinedReward, load_combination

        combined = CombinedReward(load_combination(arg), device=device, batch_size=batch_size)
        combined.flag_prompts(prompt_records or [])
        return combined
    if kind == "ensemble" and arg:
        from rlaif.train.reward_ensemble import EnsembleReward, parse_ensemble_spec

        return EnsembleReward(parse_ensemble_spec(arg), device=device, batch_size=batch_size, max_length=max_length)
    if spec in ("labeler:direct", "judge:direct"):
        return direct_reward(judge_from_spec(judge, constitution))
    raise UserError(f"reward {spec!r}: expected {REWARD_SPECS}")


# ---------------------------------------------------------------- rules


def brevity(prompts, responses, limit: int = 40) -> list[float]:
    """A verifiable rule: 1 for an empty reply, falling linearly to 0 at `limit` words."""
    return [max(0.0, 1.0 - len(r.split()) / limit) for r in responses]


def import_rule(path: str) -> Callable:
    """`module:function` -> the function; ValueError saying which part does not import."""
    module, sep, name = path.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"expected module:function, got {path!r}")
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - whatever the import raised, the user fixes the module
        raise ValueError(f"module {module!r} does not import ({type(e).__name__}: {e})") from None
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise ValueError(f"module {module!r} has no function {name!r}")
    return fn


# ---------------------------------------------------------------- GRPO's reward components


class RewardSpec(Strict):
    """One reward of a weighted sum (a `rewards:` list item)."""

    kind: Literal["judge_direct", "judge_pairwise", "model", "rule"]
    name: str | None = Field(None, description="what the log calls it; default: the kind (names must be unique)")
    weight: float = 1.0
    spec: str | None = Field(None, description="model: rm:DIR | ensemble:... | combined:FILE")
    function: str | None = Field(None, description="rule: module:function")
    constitution: str | None = Field(None, description="judge rewards: default the trainer's (or the pipeline's)")
    principles: int = Field(1, ge=1, description="judge_direct: principles asked per prompt (scores averaged)")
    against: Literal["group", "reference"] = Field("group", description="judge_pairwise")
    references: str | None = Field(
        None, description="against reference: JSONL prompt + response; default the start policy's greedy reply")

    @field_validator("function")
    @classmethod
    def _imports(cls, v):
        if v is not None:
            import_rule(v)
        return v

    @model_validator(mode="after")
    def _complete(self):
        if self.kind == "model" and not self.spec:
            raise ValueError(f"a model reward needs spec: {REWARD_SPECS}")
        if self.kind == "rule" and not self.function:
            raise ValueError("a rule reward needs function: module:function")
        if self.name is None:
            self.name = self.kind
        return self


def check_reward_names(specs: Sequence[RewardSpec], weights: dict | None) -> None:
    """Unique names; every key of `weights` names a configured reward. ValueError otherwise."""
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"reward names must be unique; repeated: {', '.join(dup)} (set name: on each)")
    unknown = sorted(set(weights or {}) - set(names))
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a configured reward (configured: {', '.join(names) or 'none'})")


class Component:
    """A named, weighted reward: `score(prompts, responses, groups) -> (values or None, failure reasons)`.
    `groups[i]` is the index of reply i's prompt group."""

    def __init__(self, name: str, weight: float, fn: Callable):
        self.name, self.weight, self.fn = name, weight, fn

    def score(self, prompts, responses, groups):
        values = [None if v is None or not math.isfinite(float(v)) else float(v)
                  for v in self.fn(prompts, responses)]
        if len(values) != len(responses):
            raise UserError(f"reward {self.name}: returned {len(values)} scores for {len(responses)} replies")
        return values, [None if v is not None else "no finite score" for v in values]


class JudgeReward(Component):
    """A judge reward of a group: "direct" (each reply's score), "pairwise" (R_i = mean over the
    other replies of its group of p(y_i ≻ y_j)) or "reference" (R_i = p(y_i ≻ y_ref)), through
    `Judge.group_rewards_many` with per-reply failures."""

    def __init__(self, name: str, weight: float, judge: Judge, mode: str = "direct", references: dict | None = None):
        super().__init__(name, weight, None)
        self.judge, self.engine, self.mode = judge, judge.engine, mode
        self.references = references or {}  # record_id(prompt messages) -> reference reply

    def score(self, prompts, responses, groups):
        from rlaif.prompts_io import as_messages
        from rlaif.records import record_id

        members: dict[int, list[int]] = {}
        for i, g in enumerate(groups):
            members.setdefault(g, []).append(i)
        idx = list(members.values())
        group_prompts = [prompts[m[0]] for m in idx]
        refs = None
        if self.mode == "reference":
            refs = []
            for prompt in group_prompts:
                key = record_id(as_messages(prompt, "grpo prompt"))
                if key not in self.references:
                    raise UserError(f"reward {self.name}: no reference reply for a prompt (against: reference)")
                refs.append(self.references[key])
        failures: dict = {}
        rewards = self.judge.group_rewards_many(group_prompts, [[responses[i] for i in m] for m in idx], self.mode,
                                                refs, failures=failures)
        values: list[float | None] = [None] * len(responses)
        reasons: list[str | None] = [None] * len(responses)
        for g, m in enumerate(idx):
            for k, i in enumerate(m):
                values[i] = rewards[g][k]
                reasons[i] = failures.get((g, k)) if values[i] is None else None
        return values, reasons


class RewardSet:
    """The weighted sum R = Σ_k w_k · R_k over components, with each component's values kept."""

    def __init__(self, components: Sequence[Component]):
        if not components:
            raise UserError("rewards: configure at least one reward")
        self.components = list(components)

    def __call__(self, prompts, responses, groups) -> tuple[list[float | None], dict, list[dict]]:
        """-> (totals, {name: values}, failures [{reply, reward, reason}])."""
        per, failures = {}, []
        for c in self.components:
            values, reasons = c.score(prompts, responses, groups)
            per[c.name] = values
            failures += [{"reply": i, "reward": c.name, "reason": r} for i, r in enumerate(reasons) if r is not None]
        totals = []
        for i in range(len(responses)):
            parts = [(c.weight, per[c.name][i]) for c in self.components if c.weight != 0]
            totals.append(None if any(v is None for _, v in parts) else sum(w * v for w, v in parts))
        return totals, per, failures

    @property
    def engines(self) -> list:
        return [c.engine for c in self.components if hasattr(c, "engine")]


def build_rewards(specs: Sequence[RewardSpec], weights: dict | None, *, judge: Judge | None = None,
                  constitution: str | None = None, device="cpu", batch_size: int = 16, max_length: int = 512,
                  prompt_records=None, references: dict | None = None) -> RewardSet:
    """Components from the config. `judge`: the Judge judge rewards use (needed only when one is
    configured; a reward's own `constitution`, else `constitution`, replaces the judge's);
    `references`: record_id(prompt) -> reference reply for `against: reference`."""
    comps: list[Component] = []
    for s in specs:
        w = (weights or {}).get(s.name, s.weight)
        if s.kind in ("judge_direct", "judge_pairwise"):
            if judge is None:
                raise UserError(f"reward {s.name}: a judge reward needs a judge "
                                "(--judge SPEC, or the pipeline's judge)")
            const = s.constitution or constitution
            j = judge.with_constitution(const) if const else judge
            if s.kind == "judge_direct":
                j = j.with_config(j.config.model_copy(update={"principles": s.principles}))
                comps.append(JudgeReward(s.name, w, j, "direct"))
            else:
                comps.append(JudgeReward(s.name, w, j, "pairwise" if s.against == "group" else "reference", references))
        elif s.kind == "model":
            comps.append(Component(s.name, w, reward_fn_from_spec(s.spec, judge="", device=device,
                                                                  batch_size=batch_size, max_length=max_length,
                                                                  prompt_records=prompt_records)))
        else:
            comps.append(Component(s.name, w, import_rule(s.function)))
    return RewardSet(comps)
