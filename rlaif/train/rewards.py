"""Reward functions for online RL (PPO, GRPO): the judge's direct score, a pairwise judge reward
inside a group of replies, trained reward models, and Python rules — and their weighted sum.

Every reward here scores replies `y` to prompts `x`:

- `judge_direct`: the judge's probability-weighted 1–10 score, normalised to [0, 1]
  (rlaif/stages/labeler.py `direct_scores`): one question per prompt, so the replies of one group
  are read on one scale.
- `judge_pairwise`: inside the group of G replies to a prompt, each reply y_i against every other
  y_j (`against: group`) or against one fixed reference reply y_ref (`against: reference`), shown
  in both orders, soft (the labeler's p(a ≻ b) from the option log-probabilities):

      R_i = 1/(G−1) · Σ_{j≠i} p(y_i ≻ y_j)        or        R_i = p(y_i ≻ y_ref)

  A pair is judged once for (i, j) and gives p(y_j ≻ y_i) = 1 − p(y_i ≻ y_j). The question (one
  principle) is drawn per prompt, so a group's pairs are asked the same one.
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
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Literal, Sequence

from pydantic import Field, field_validator, model_validator

from rlaif.config import Strict
from rlaif.errors import RequestFailed, UserError

Messages = list[dict]
RewardFn = Callable[[Sequence[Messages | str], Sequence[str]], Sequence[float]]

# ---------------------------------------------------------------- the judge's direct score (d-RLAIF)


def direct_reward(engine, constitution, *, principles: int = 1, seed: int = 0):
    """`reward_fn(prompts, responses) -> [0, 1] scores` over a judge engine (direct RLAIF);
    `reward_fn.detailed(prompts, responses)` gives `direct_scores_detailed` (with the principles)."""
    from rlaif.stages.direct_scoring import direct_scores_detailed

    def detailed(prompts, responses):
        return direct_scores_detailed(engine, prompts, responses, constitution=constitution,
                                      principles=principles, seed=seed)

    def reward_fn(prompts, responses):
        return [d["score"] for d in detailed(prompts, responses)]

    reward_fn.detailed = detailed
    reward_fn.engine = engine
    return reward_fn


def direct_reward_fn(model_spec: str, constitution: str | None = None, *, principles: int = 1, seed: int = 0):
    """`direct_reward` for PPO / best-of-N, loading the labeler engine once. Default constitution:
    harmless."""
    from rlaif.backends import load_engine
    from rlaif.config import parse_model_spec
    from rlaif.constitution import load_constitution

    engine = load_engine(parse_model_spec(model_spec))
    return direct_reward(engine, load_constitution(constitution or "harmless"), principles=principles, seed=seed)


# ---------------------------------------------------------------- reward specs (rm:, labeler:direct, ...)

REWARD_SPECS = ("rm:DIR (a saved reward model), labeler:direct, combined:FILE.yaml (helpful + harmless RMs, "
                "rlaif combine-rm) or ensemble:DIR|DIR1,DIR2,...,calibration=FILE[,lambda_std=L|,min]")


def reward_fn_from_spec(spec: str, *, labeler_model: str, constitution: str | None = None,
                        device="cpu", batch_size: int = 16, max_length: int = 512, prompt_records=None) -> RewardFn:
    """`rm:DIR` -> a saved reward model; `labeler:direct` -> the labeler's direct 1–10 score;
    `combined:FILE` -> helpful and harmless RMs by the Llama 2 rule (`prompt_records`, the prompt
    file's records, say which prompts are flagged unsafe); `ensemble:...` -> a conservative RM ensemble."""
    from rlaif.train.common import resolve

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
    if spec == "labeler:direct":
        return labeler_direct_reward(labeler_model, constitution)
    raise UserError(f"reward {spec!r}: expected {REWARD_SPECS}")


def labeler_direct_reward(model_spec: str, constitution: str | None) -> RewardFn:
    """Direct RLAIF: the labeler's probability-weighted 1–10 score of each response."""
    return direct_reward_fn(model_spec, constitution)


# ---------------------------------------------------------------- rules


def brevity(prompts, responses, limit: int = 40) -> list[float]:
    """A verifiable rule: 1 for an empty reply, falling linearly to 0 at `limit` words."""
    return [max(0.0, 1.0 - len(r.split()) / limit) for r in responses]


def ends_a_sentence(prompts, responses) -> list[float]:
    """A format rule: 1 when the reply ends with . ! or ?, else 0."""
    return [1.0 if r.rstrip().endswith((".", "!", "?")) else 0.0 for r in responses]


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
    name: str | None = None  # what the log calls it; default: the kind (names must be unique)
    weight: float = 1.0
    spec: str | None = None  # model: rm:DIR | ensemble:... | combined:FILE
    function: str | None = None  # rule: module:function
    constitution: str | None = None  # judge rewards: default the trainer's (or the pipeline's)
    principles: int = Field(1, ge=1)  # judge_direct: principles asked per prompt (scores averaged)
    against: Literal["group", "reference"] = "group"  # judge_pairwise
    references: str | None = None  # against reference: JSONL prompt + response; default the start policy's greedy reply

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


def guarded(call: Callable[[list], list], units: list, concurrent: bool) -> tuple[list, list[str | None]]:
    """`call(units)` with per-unit failures: on `RequestFailed` every unit is tried alone
    (threads when `concurrent`). -> (results with None for a failed unit, reasons)."""
    try:
        return list(call(units)), [None] * len(units)
    except RequestFailed:
        pass

    def one(u):
        try:
            return call([u])[0], None
        except RequestFailed as e:
            return None, e.reason

    if concurrent and len(units) > 1:
        with ThreadPoolExecutor(min(len(units), 32), thread_name_prefix="rlaif-reward") as pool:
            done = list(pool.map(one, units))
    else:
        done = [one(u) for u in units]
    return [d[0] for d in done], [d[1] for d in done]


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


class DirectJudge(Component):
    def __init__(self, name, weight, engine, constitution, principles: int = 1, seed: int = 0):
        super().__init__(name, weight, None)
        self.engine, self.constitution, self.principles, self.seed = engine, constitution, principles, seed

    def score(self, prompts, responses, groups):
        from rlaif.runner import independent_requests
        from rlaif.stages.direct_scoring import direct_scores

        def call(idx):
            return direct_scores(self.engine, [prompts[i] for i in idx], [responses[i] for i in idx],
                                 constitution=self.constitution, principles=self.principles, seed=self.seed)

        return guarded(call, list(range(len(responses))), independent_requests(self.engine))


class PairwiseJudge(Component):
    """R_i = mean over the other replies of its group of p(y_i ≻ y_j), or p(y_i ≻ y_ref)."""

    def __init__(self, name, weight, engine, constitution, against: str = "group", seed: int = 0,
                 references: dict | None = None):
        super().__init__(name, weight, None)
        from rlaif.stages.labeler import LabelerConfig, make_process, templates_for

        self.engine, self.constitution, self.against, self.seed = engine, constitution, against, seed
        self.references = references or {}  # record_id(prompt messages) -> reference reply
        self.cfg = LabelerConfig(debias=True, seed=seed)
        self.templates = templates_for(self.cfg)
        self.process = make_process(engine, constitution, self.cfg, self.templates)

    def _records(self, pairs: list[tuple]) -> list[dict]:
        from rlaif.prompts_io import as_messages
        from rlaif.records import record_id
        from rlaif.stages.judge_prompts import draw_principles
        from rlaif.stages.labeler import iter_label_inputs

        raw = []
        for prompt, a, b in pairs:
            msgs = as_messages(prompt, "grpo prompt")
            pid = draw_principles(self.constitution, self.seed, record_id(msgs), 1)[0].id
            raw.append({"prompt": msgs, "a": a, "b": b, "principle": pid, "given": None,
                        "source_line": None, "source_id": None})
        ids = {k: t.id for k, t in self.templates.items()}
        return list(iter_label_inputs(raw, self.constitution, self.cfg, ids, f"{self.engine.name}:{self.engine.model}"))

    def score(self, prompts, responses, groups):
        from rlaif.prompts_io import as_messages
        from rlaif.records import record_id
        from rlaif.runner import independent_requests

        pairs, owners = [], []  # owners: (i, j) reply indices, j = None for the reference
        members: dict[int, list[int]] = {}
        for i, g in enumerate(groups):
            members.setdefault(g, []).append(i)
        for idx in members.values():
            if self.against == "reference":
                for i in idx:
                    key = record_id(as_messages(prompts[i], "grpo prompt"))
                    if key not in self.references:
                        raise UserError(f"reward {self.name}: no reference reply for a prompt (against: reference)")
                    pairs.append((prompts[i], responses[i], self.references[key]))
                    owners.append((i, None))
            else:
                for x, i in enumerate(idx):
                    for j in idx[x + 1:]:
                        pairs.append((prompts[i], responses[i], responses[j]))
                        owners.append((i, j))
        records = self._records(pairs)
        p_a, reasons = guarded(lambda recs: [r["p_a"] for r in self.process(recs)], records,
                               independent_requests(self.engine))
        wins: dict[int, list[float]] = {i: [] for i in range(len(responses))}
        why: dict[int, str] = {}
        for (i, j), p, reason in zip(owners, p_a, reasons):
            if p is None:
                why.setdefault(i, reason)
                if j is not None:
                    why.setdefault(j, reason)
                continue
            wins[i].append(p)
            if j is not None:
                wins[j].append(1.0 - p)
        values = [sum(w) / len(w) if w else None for w in wins.values()]
        return values, [None if v is not None else why.get(i, "no pair judged") for i, v in enumerate(values)]


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


def build_rewards(specs: Sequence[RewardSpec], weights: dict | None, *, judge=None, constitution: str | None = None,
                  seed: int = 0, device="cpu", batch_size: int = 16, max_length: int = 512, prompt_records=None,
                  references: dict | None = None) -> RewardSet:
    """Components from the config. `judge`: the engine judge rewards use (needed only when one is
    configured); `references`: record_id(prompt) -> reference reply for `against: reference`."""
    from rlaif.constitution import load_constitution

    comps: list[Component] = []
    for s in specs:
        w = (weights or {}).get(s.name, s.weight)
        if s.kind in ("judge_direct", "judge_pairwise"):
            if judge is None:
                raise UserError(f"reward {s.name}: a judge reward needs a judge "
                                "(--judge SPEC, or the pipeline's judge)")
            const = load_constitution(s.constitution or constitution or "harmless")
            if s.kind == "judge_direct":
                comps.append(DirectJudge(s.name, w, judge, const, s.principles, seed))
            else:
                comps.append(PairwiseJudge(s.name, w, judge, const, s.against, seed, references))
        elif s.kind == "model":
            comps.append(Component(s.name, w, reward_fn_from_spec(s.spec, labeler_model="", device=device,
                                                                  batch_size=batch_size, max_length=max_length,
                                                                  prompt_records=prompt_records)))
        else:
            comps.append(Component(s.name, w, import_rule(s.function)))
    return RewardSet(comps)
