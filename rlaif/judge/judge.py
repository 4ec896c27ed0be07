"""The judge: one object that asks a model which reply is better, or how good a reply is.

`Judge(engine, constitution, config)` is what every caller goes through: the label stage, the
judge check, eval-labeler, policy evaluation, rank, the rounds, best-of-N, PPO/GRPO rewards,
annotation, the reward server and the trainer integrations. The maths (Bai et al. 2022; Lee et al.
2023) lives in the modules it uses:

- pairwise, `compare`: the soft label P(A) = softmax over the option tokens' log-probabilities
  (rlaif/judge/soft_labels.py); both orders averaged, p(a ≻ b) = ½ [P_ab(A) + 1 − P_ba(A)]; CoT
  votes clamped; principle ensembles and self-consistency averaged over their votes;
- direct, `score`: the probability-weighted 1–10 score s = (E[k] − 1) / 9 (rlaif/judge/scoring.py);
  a pair compared in direct mode gives p(a ≻ b) = ½ (1 + s_a − s_b);
- `group_rewards`: the rewards of G replies to one prompt, from direct scores, from a round robin
  inside the group, R_i = 1/(G−1) Σ_{j≠i} p(y_i ≻ y_j), or against a reference reply, R_i = p(y_i ≻ y_ref).

Principles: a pair is judged under `config.principles` principles drawn from (seed, the pair's
content), a reply under principles drawn from (seed, the conversation), so every reply to one
prompt — and every pair of a group — is asked the same question(s). A caller may name them instead.

Engine calls are serialised by a lock (a local model is not thread-safe); the async twins
(`acompare_many`, `ascore_many`, `agroup_rewards`, ...) gather concurrent awaits into engine
batches (rlaif/judge/batching.py), so a server's many small requests become few forward passes.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from rlaif.backends.base import Engine, GenerationRequest, OptionRequest, independent_requests
from rlaif.constitution import Constitution, load_constitution
from rlaif.errors import UserError
from rlaif.judge.batching import MicroBatcher, isolated
from rlaif.judge.config import JudgeConfig
from rlaif.judge.prompts import (conversation_text, direct_score_requests, draw_principles, format_examples, sanitize,
                                 shown_reply)
from rlaif.judge.scoring import score_requests
from rlaif.judge.soft_labels import OPTIONS, aggregate, clamp, p_a_from_vote, pair_label_from_scores, soft_label
from rlaif.prompts_io import as_messages
from rlaif.records import record_id, request_seed
from rlaif.templates import Template, load_template

Prompt = str | list[dict]
MODES = ("direct", "pairwise", "reference")


@dataclass
class Judgement:
    """One pair judged: p(a ≻ b) and what it was made of."""

    p_a: float
    labels_by_order: dict  # {"ab": p(a ≻ b) with a shown first, "ba": with b shown first}; None where not asked
    principles: list[str]
    votes: list[dict] = field(default_factory=list)  # one per (principle, order, sampled rationale)
    rationale: str | None = None  # the first rationale, when CoT
    # {"prompt", "completion"}: the engine's token counts for the batch, shared out over its pairs by
    # the characters each sent (exact for a batch of one); empty for an engine that keeps no counts
    tokens: dict = field(default_factory=dict)

    @property
    def p_b(self) -> float:
        return 1.0 - self.p_a

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Score:
    """One reply scored 1–10: `value` = (E[k] − 1) / 9 in [0, 1], averaged over its principles."""

    value: float
    distribution: list[float]  # p(k) for k = 1..10, averaged over the principles
    principles: list[str]
    scores: list[float] = field(default_factory=list)  # `value` per principle
    distributions: list[list[float]] = field(default_factory=list)
    floored: list[str] = field(default_factory=list)  # options a server did not list (given a floor)

    @property
    def expected(self) -> float:
        """E[k] on the 1–10 scale."""
        return 1.0 + 9.0 * self.value

    def as_dict(self) -> dict:
        return {**asdict(self), "expected": self.expected}


class Judge:
    """A judge: an engine, a constitution and how to ask (`JudgeConfig`)."""

    def __init__(self, engine: Engine, constitution: Constitution | str | Path = "harmless",
                 config: JudgeConfig | None = None):
        self.engine = engine
        self.constitution = constitution if isinstance(constitution, Constitution) else load_constitution(constitution)
        self.config = config if config is not None else JudgeConfig()
        self._lock = threading.RLock()
        self._batchers: dict[str, MicroBatcher] = {}

    def __getstate__(self) -> dict:
        """A judge travels (a Ray task's closure) without its lock and batchers: each copy makes its own."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_batchers")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._batchers = {}

    # ------------------------------------------------------------ what it is

    @property
    def name(self) -> str:
        """engine:model, as records and manifests name a judge."""
        return f"{self.engine.name}:{self.engine.model}"

    def pair_template(self) -> tuple[str, Template]:
        """(kind, template) a pair is asked with: direct, cot or pairwise."""
        cfg = self.config
        if cfg.mode == "direct":
            return "direct", load_template(cfg.direct_template)
        return ("cot", load_template(cfg.cot_template)) if cfg.cot else ("pairwise", load_template(cfg.pairwise_template))

    def template_ids(self) -> dict[str, str]:
        kind, template = self.pair_template()
        return {kind: template.id}

    def describe(self) -> dict:
        """What records say produced a label (`labeler` field)."""
        cfg, (_, template) = self.config, self.pair_template()
        return {"engine": self.engine.name, "model": self.engine.model, "template": template.id, "mode": cfg.mode,
                "debias": cfg.debias and cfg.mode == "pairwise", "cot": cfg.cot, "principles": cfg.principles,
                "self_consistency": cfg.self_consistency, "few_shot": cfg.few_shot,
                "clamp": list(cfg.clamp) if cfg.cot else None,
                "constitution": {"name": self.constitution.name, "version": self.constitution.version}}

    def with_constitution(self, constitution: Constitution | str | Path) -> "Judge":
        """The same engine and settings under another constitution (e.g. harmless-rate scoring)."""
        other = Judge(self.engine, constitution, self.config)
        other._lock = self._lock  # one engine, one lock
        return other

    def with_config(self, config: JudgeConfig) -> "Judge":
        other = Judge(self.engine, self.constitution, config)
        other._lock = self._lock
        return other

    # ------------------------------------------------------------ principles

    def principle_ids(self, ids: Sequence[str]) -> list[str]:
        known = {q.id for q in self.constitution.principles}
        for pid in ids:
            if pid not in known:
                raise UserError(f"principle {pid!r} is not the id of a principle in constitution "
                                f"{self.constitution.name} (ids: {', '.join(sorted(known))})")
        return list(ids)

    def pair_principles(self, prompt: Prompt, a: str, b: str) -> list[str]:
        """The principles a pair is judged under: drawn from (seed, the pair's content) alone."""
        key = record_id(as_messages(prompt, "pair"), a, b)
        return [q.id for q in draw_principles(self.constitution, self.config.seed, key, self.config.principles)]

    def prompt_principles(self, prompt: Prompt) -> list[str]:
        """The principles every reply to (and every pair of replies to) one prompt is asked under."""
        key = record_id(as_messages(prompt, "prompt"))
        return [q.id for q in draw_principles(self.constitution, self.config.seed, key, self.config.principles)]

    def _per_item(self, given, n: int, draw: Callable[[int], list[str]]) -> list[list[str]]:
        """Principle ids per item: drawn, one id (or list) for all, or one entry per item."""
        if given is None:
            return [draw(i) for i in range(n)]
        if isinstance(given, str):
            return [self.principle_ids([given])] * n
        given = list(given)
        if len(given) != n:
            raise UserError(f"principles: expected one entry per item ({n}), got {len(given)}")
        return [self.principle_ids([g] if isinstance(g, str) else g) if g else draw(i) for i, g in enumerate(given)]

    # ------------------------------------------------------------ pairs

    def compare(self, prompt: Prompt, a: str, b: str, *, principle: str | Sequence[str] | None = None) -> Judgement:
        """p(a ≻ b) for one pair."""
        return self.compare_many([prompt], [a], [b], principles=None if principle is None else [principle])[0]

    def compare_many(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str], *,
                     principles=None, keys: Sequence[str] | None = None) -> list[Judgement]:
        """Many pairs in one batch of engine calls. `principles`: None (drawn per pair), one id for
        all, or per pair an id, a list of ids or None. `keys`: per pair, what seeds its sampled
        rationales (default: the pair's content)."""
        if not len(prompts) == len(a) == len(b):
            raise UserError(f"compare_many: {len(prompts)} prompts, {len(a)} first and {len(b)} second replies; "
                            "expected as many of each")
        msgs = [as_messages(p, f"pair {i}") for i, p in enumerate(prompts)]
        pids = self._per_item(principles, len(msgs), lambda i: self.pair_principles(msgs[i], a[i], b[i]))
        keys = list(keys) if keys is not None else [record_id(m, x, y) for m, x, y in zip(msgs, a, b)]
        if not msgs:
            return []
        with self._lock:
            before = self._token_counts()
            if self.config.mode == "direct":
                votes = self._direct_votes(msgs, a, b, pids)
            else:
                votes = self._pair_votes(msgs, a, b, pids, keys)
            used = self._token_counts()
        sizes = [len(vs) * (sum(len(m["content"]) for m in ms) + len(x) + len(y))
                 for ms, x, y, vs in zip(msgs, a, b, votes)]
        tokens = [{k: round((used[k] - before[k]) * n / max(sum(sizes), 1), 1) for k in used} if used else {}
                  for n in sizes]
        out = []
        for ids, vs, tk in zip(pids, votes, tokens):
            if self.config.mode == "direct":
                p_a, by_order = sum(v["p_a"] for v in vs) / len(vs), {"ab": None, "ba": None}
            else:
                p_a, by_order = aggregate(vs)
            rationales = [v["rationale"] for v in vs if v["rationale"]]
            out.append(Judgement(p_a, by_order, list(ids), vs, rationales[0] if rationales else None, tk))
        return out

    def _token_counts(self) -> dict:
        """The engine's running prompt/completion token counters ({} when it keeps none)."""
        stats = getattr(self.engine, "stats", None)
        s = stats() if callable(stats) else {}
        return {k: float(s[k]) for k in ("prompt_tokens", "completion_tokens") if k in s}

    def _pair_votes(self, msgs, a, b, pids, keys) -> list[list[dict]]:
        """Every (principle, order, sample) vote of every pair, in two engine calls at most."""
        cfg, c = self.config, self.constitution
        kind, template = self.pair_template()
        orders = ("ab", "ba") if cfg.debias else ("ab",)
        jobs = []  # (pair index, principle id, order, template values)
        for i, m in enumerate(msgs):
            conv = conversation_text(m, cfg.max_conversation_chars)
            ra = shown_reply(a[i], cfg.max_response_chars, cfg.sanitize)
            rb = shown_reply(b[i], cfg.max_response_chars, cfg.sanitize)
            for pid in pids[i]:
                pr = c.principle(pid)
                examples = format_examples(c, pr, cfg.few_shot) if cfg.few_shot else ""
                for order in orders:
                    first, second = (ra, rb) if order == "ab" else (rb, ra)
                    jobs.append((i, pid, order, {"examples": examples, "conversation": conv, "response_a": first,
                                                 "response_b": second, "question": pr.comparison_question.strip()}))
        requests, meta = [], []
        if cfg.cot:
            samples = cfg.self_consistency
            temp = cfg.sc_temperature if samples > 1 else cfg.cot_temperature
            gens = self.engine.generate([
                GenerationRequest(template.render(**v), temperature=temp, max_tokens=cfg.cot_max_tokens, n=samples,
                                  seed=request_seed(cfg.seed, keys[i], pid, order)) for i, pid, order, v in jobs])
            for (i, pid, order, v), gen in zip(jobs, gens):
                for text in gen.texts:
                    rationale = sanitize(text.strip())
                    requests.append(OptionRequest(template.render(**v), template.render_prefill(rationale=rationale, **v)))
                    meta.append((i, pid, order, rationale))
        else:
            for i, pid, order, v in jobs:
                requests.append(OptionRequest(template.render(**v), template.render_prefill(**v)))
                meta.append((i, pid, order, None))
        votes: list[list[dict]] = [[] for _ in msgs]
        for (i, pid, order, rationale), lp in zip(meta, self.engine.option_logprobs(requests, list(OPTIONS))):
            p_raw = soft_label(lp)
            p_first = clamp(p_raw, cfg.clamp) if cfg.cot else p_raw
            votes[i].append({"principle": pid, "order": order, "p_first": p_first, "p_first_raw": p_raw,
                             "p_a": p_a_from_vote(p_first, order), "rationale": rationale,
                             "floored": list(getattr(lp, "floored", ()))})
        return votes

    def _direct_votes(self, msgs, a, b, pids) -> list[list[dict]]:
        """A pair compared by two direct scores under each of its principles."""
        items = [(m, reply, pid) for m, x, y, ids in zip(msgs, a, b, pids) for pid in ids for reply in (x, y)]
        scored = iter(self._score_items(items))
        votes = []
        for ids in pids:
            vs = []
            for pid in ids:
                sa, sb = next(scored), next(scored)
                vs.append({"principle": pid, "order": "direct", "score_a": sa["score"], "score_b": sb["score"],
                           "distribution_a": sa["distribution"], "distribution_b": sb["distribution"],
                           "p_a": pair_label_from_scores(sa["score"], sb["score"]), "rationale": None,
                           "floored": sorted(set(sa["floored"]) | set(sb["floored"]))})
            votes.append(vs)
        return votes

    # ------------------------------------------------------------ single replies

    def _score_items(self, items: Sequence[tuple[list[dict], str, str]]) -> list[dict]:
        """(messages, reply, principle id) -> {"score", "distribution", "floored"} each."""
        cfg, template = self.config, load_template(self.config.direct_template)
        convs = [conversation_text(m, cfg.max_conversation_chars) for m, _, _ in items]
        qs = [self.constitution.principle(pid).comparison_question for _, _, pid in items]
        return score_requests(self.engine, direct_score_requests(template, convs, [r for _, r, _ in items], qs,
                                                                 cfg.max_response_chars, cfg.sanitize))

    def score(self, prompt: Prompt, reply: str, *, principle: str | Sequence[str] | None = None) -> Score:
        """The reply's 1–10 score distribution and its expected value."""
        return self.score_many([prompt], [reply], principles=None if principle is None else [principle])[0]

    def score_many(self, prompts: Sequence[Prompt], replies: Sequence[str], *, principles=None) -> list[Score]:
        """Many replies in one batch. `principles` as in `compare_many`; drawn per prompt by default,
        so the replies to one prompt are read on one scale."""
        if len(prompts) != len(replies):
            raise UserError(f"score_many: {len(prompts)} prompts and {len(replies)} replies; expected as many of each")
        msgs = [as_messages(p, f"prompt {i}") for i, p in enumerate(prompts)]
        pids = self._per_item(principles, len(msgs), lambda i: self.prompt_principles(msgs[i]))
        items = [(m, r, pid) for m, r, ids in zip(msgs, replies, pids) for pid in ids]
        if not items:
            return []
        with self._lock:
            scored = iter(self._score_items(items))
        out = []
        for ids in pids:
            parts = [next(scored) for _ in ids]
            dists = [s["distribution"] for s in parts]
            out.append(Score(value=sum(s["score"] for s in parts) / len(parts),
                             distribution=[sum(col) / len(col) for col in zip(*dists)], principles=list(ids),
                             scores=[s["score"] for s in parts], distributions=dists,
                             floored=sorted({f for s in parts for f in s["floored"]})))
        return out

    # ------------------------------------------------------------ groups (GRPO, best-of-N)

    def group_rewards(self, prompt: Prompt, replies: Sequence[str], mode: str = "direct",
                      reference: str | None = None) -> list[float]:
        """Rewards of the replies to one prompt: "direct" (each reply's score), "pairwise" (its mean
        p of beating the others of the group), "reference" (its p of beating `reference`)."""
        return self.group_rewards_many([prompt], [replies], mode, None if reference is None else [reference])[0]

    def group_rewards_many(self, prompts: Sequence[Prompt], groups: Sequence[Sequence[str]], mode: str = "direct",
                           references: Sequence[str] | None = None, *,
                           failures: dict | None = None) -> list[list[float | None]]:
        """`group_rewards` for many prompts in one batch. Given a `failures` dict, a request that
        fails for good (RequestFailed) is retried a unit at a time, the replies whose units still
        fail get None and `failures[(group, reply)]` says why; without it the failure is raised."""
        if mode not in MODES:
            raise UserError(f"group rewards: mode {mode!r}: expected one of {', '.join(MODES)}")
        if len(prompts) != len(groups):
            raise UserError(f"group rewards: {len(prompts)} prompts and {len(groups)} groups; expected as many of each")
        if mode == "reference" and (references is None or len(references) != len(prompts)):
            raise UserError("group rewards: mode reference needs one reference reply per prompt")
        msgs = [as_messages(p, f"prompt {i}") for i, p in enumerate(prompts)]
        run = (lambda call, units: isolated(call, units, independent_requests(self.engine))) if failures is not None \
            else (lambda call, units: (list(call(units)), [None] * len(units)))
        owners = [(g, k) for g, replies in enumerate(groups) for k in range(len(replies))]
        if mode == "direct":
            units = [(msgs[g], groups[g][k]) for g, k in owners]
            values, reasons = run(lambda us: [s.value for s in self.score_many([m for m, _ in us], [r for _, r in us])],
                                  units)
            out: list[list[float | None]] = [[None] * len(r) for r in groups]
            for (g, k), v, why in zip(owners, values, reasons):
                out[g][k] = v
                if why is not None:
                    failures[(g, k)] = why
            return out
        # pairwise: (g, i, j) units, j = None for the reference; one question per prompt
        pids = [self.prompt_principles(m) for m in msgs]
        units = []
        for g, replies in enumerate(groups):
            if mode == "reference":
                units += [(g, i, None) for i in range(len(replies))]
            else:
                units += [(g, i, j) for i in range(len(replies)) for j in range(i + 1, len(replies))]

        def call(us):
            return [j.p_a for j in self.compare_many(
                [msgs[g] for g, _, _ in us], [groups[g][i] for g, i, _ in us],
                [references[g] if j is None else groups[g][j] for g, _, j in us], principles=[pids[g] for g, _, _ in us])]

        p_a, reasons = run(call, units)
        wins: dict[tuple, list[float]] = {o: [] for o in owners}
        why: dict[tuple, str] = {}
        for (g, i, j), p, reason in zip(units, p_a, reasons):
            if p is None:
                why.setdefault((g, i), reason)
                if j is not None:
                    why.setdefault((g, j), reason)
                continue
            wins[(g, i)].append(p)
            if j is not None:
                wins[(g, j)].append(1.0 - p)
        out = [[None] * len(r) for r in groups]
        for (g, k), w in wins.items():  # a reply keeps the mean of the pairs that were judged
            if w:
                out[g][k] = sum(w) / len(w)
            elif failures is not None:
                failures[(g, k)] = why.get((g, k), "no other reply in its group to compare with")
        return out

    # ------------------------------------------------------------ the judge check

    def check(self) -> dict:
        """The judge check in memory: the constitution's check pairs judged (the better reply on a
        seeded side), accuracy with its bootstrap 95 % CI, mean p(right), flip rate, status and the
        one line a run prints (rlaif/judge/check.py). `rlaif judge-check` writes the same to files."""
        from rlaif.judge.check import check_pairs, check_result, skipped_result

        if not self.constitution.check_pairs:
            return skipped_result(self)
        pairs = check_pairs(self.constitution, blind_seed=self.config.seed)
        named = [[p["principle"]] if "principle" in p else None for p in pairs]
        judged = self.compare_many([p["prompt"] for p in pairs], [p["a"] for p in pairs], [p["b"] for p in pairs],
                                   principles=named)
        right = [j.p_a if p["human_chosen"] == "a" else j.p_b for p, j in zip(pairs, judged)]
        orders = [(j.labels_by_order["ab"], j.labels_by_order["ba"]) for j in judged]
        return check_result(self, right, orders, [(p["a"], p["b"], j.p_a, p["human_chosen"] == "a") for p, j in zip(pairs, judged)])

    def audit(self, pairs: Sequence[dict] | None = None, *, self_pairs: Sequence[dict] | None = None, seed: int = 0,
              probes: Sequence[str] | None = None) -> dict:
        """The judge audit (rlaif/judge/audit.py): position, verbosity, template, injection and
        self-preference probes, each an effect with its 95 % CI, over `pairs` ({prompt, a, b}; default
        the constitution's check pairs)."""
        from rlaif.judge.audit import PROBES, run_audit

        return run_audit(self, pairs, self_pairs=self_pairs, seed=seed, probes=probes or PROBES)

    # ------------------------------------------------------------ async twins

    def _batcher(self, kind: str, fn: Callable[[list], list]) -> MicroBatcher:
        if kind not in self._batchers:
            self._batchers[kind] = MicroBatcher(fn, name=kind)
        return self._batchers[kind]

    async def acompare_many(self, prompts, a, b, *, principles=None) -> list[Judgement]:
        """`compare_many`, gathered with other concurrent awaits into one engine batch."""
        units = list(zip(prompts, a, b, principles if principles is not None else [None] * len(prompts)))
        batcher = self._batcher("compare", lambda us: self.compare_many(
            [u[0] for u in us], [u[1] for u in us], [u[2] for u in us], principles=[u[3] for u in us]))
        return await batcher.submit(units)

    async def acompare(self, prompt, a, b, *, principle=None) -> Judgement:
        return (await self.acompare_many([prompt], [a], [b], principles=[principle]))[0]

    async def ascore_many(self, prompts, replies, *, principles=None) -> list[Score]:
        """`score_many`, gathered with other concurrent awaits into one engine batch."""
        units = list(zip(prompts, replies, principles if principles is not None else [None] * len(prompts)))
        batcher = self._batcher("score", lambda us: self.score_many(
            [u[0] for u in us], [u[1] for u in us], principles=[u[2] for u in us]))
        return await batcher.submit(units)

    async def ascore(self, prompt, reply, *, principle=None) -> Score:
        return (await self.ascore_many([prompt], [reply], principles=[principle]))[0]

    async def agroup_rewards_many(self, prompts, groups, mode: str = "direct", references=None) -> list[list[float]]:
        """`group_rewards_many`, gathered with other concurrent awaits (of the same mode)."""
        units = list(zip(prompts, groups, references if references is not None else [None] * len(prompts)))
        batcher = self._batcher(f"group:{mode}", lambda us: self.group_rewards_many(
            [u[0] for u in us], [u[1] for u in us], mode, [u[2] for u in us] if mode == "reference" else None))
        return await batcher.submit(units)

    async def agroup_rewards(self, prompt, replies, mode: str = "direct", reference=None) -> list[float]:
        return (await self.agroup_rewards_many([prompt], [replies], mode, [reference]))[0]

    def close(self) -> None:
        for b in self._batchers.values():
            b.close()
        self._batchers.clear()
        self.engine.close()


__all__ = ["Judge", "Judgement", "Score", "MODES"]
