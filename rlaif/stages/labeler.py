"""The AI labeler (RLAIF): which of two replies better satisfies a principle, as a soft label.

Pairwise (Bai et al. 2022, Constitutional AI; Lee et al. 2023, RLAIF). For a conversation x, replies
(a, b) and a principle's comparison question, the labeler is asked a multiple-choice question with
options (A), (B); the assistant turn is prefilled ("The answer is (") so the option is the next
token. Let ℓ_A, ℓ_B be the next-token log-probabilities of the options (every single-token spelling
summed by the engine). The soft label is the softmax over the options only:

    P(A) = exp(ℓ_A) / (exp(ℓ_A) + exp(ℓ_B))

Position debiasing: judge both orders, (A=a, B=b) and (A=b, B=a), and average

    p(a ≻ b) = ½ · [ P_ab(A) + (1 − P_ba(A)) ]

keeping both per-order labels (`labels_by_order`: p(a ≻ b) with a shown first, "ab", and second,
"ba"). A pair *flips* when the two disagree on the side (an exact tie in one order is half a flip;
see `rlaif.metrics`).

Chain of thought: first generate a rationale r (greedy, or sampled when self-consistency > 1), then
score the options with r appended to the assistant turn ("r ... So the answer is ("). CoT labels are
overconfident, so each CoT vote is clamped: P ← min(max(P, lo), hi), default [0.4, 0.6] as in CAI.

Ensembles: principle ensemble — K principles drawn per pair (seeded by the pair, weighted, without
repeats); self-consistency — S rationales sampled at temperature T > 0 per (principle, order). The
label is the mean of p(a ≻ b) over all K × orders × S votes.

Direct scoring (d-RLAIF, Lee et al. 2023): one reply is rated 1–10 against the principle and the
score is the probability-weighted mean over the score tokens, normalised to [0, 1]:

    s = (E[score] − 1) / 9,   E[score] = Σ_k k · p(k),   k = 1..10

"10" is read in two steps (see `score_distribution`). First the next-token distribution over the
first-token options: "1".."9", plus "10" itself where the tokenizer has it as one token (GPT-2,
Llama-3; the engine says so, `is_single_token`), normalised over those options (p̃). Then one more
forward pass with "1" appended gives q = p(next token "0" | "1"), which covers tokenizers that spell
"10" as "1", "0" (SmolLM2 splits numbers into digits) and the "1" + "0" path of those that have both:

    p(1) = p̃₁ · (1 − q),   p(10) = p̃₁₀ + p̃₁ · q,   p(k) = p̃_k for k = 2..9   (p̃₁₀ = 0 without the token)

Engines that reuse shared prefixes run both reads in one call (the second costs one token); on
others the second pass is skipped when p̃₁ ≤ 10⁻³, which moves s by at most p̃₁. A server (the openai
engine) cannot say which strings are one token, so it is always asked for "10" too; a "10" absent
from its `top_logprobs` is read as no mass (not floored: on most tokenizers there is no such token).

The question: every reply to one conversation is scored under the same principle(s), drawn from
(seed, the conversation) alone, so replies to one prompt are compared on one scale (best-of-N,
the direct-RLAIF reward, the harmless rate); in pair labeling both replies share the pair's
principles. `direct_scores_detailed` says which principles each score used. For a pair, direct
scores give p(a ≻ b) = ½ · (1 + s_a − s_b).

Records (TRL conversational preference format plus our fields): `prompt` (messages), `chosen` and
`rejected` (one assistant message each), `p_chosen`, `p_a`, `labels_by_order`, `principle`,
`principles`, `rationale`, `votes`, `within_margin`, `labeler` {engine, model, template, mode}.

This module is the stage (its config, inputs, votes and records); reading the answers is in
stages/soft_labels.py, what the judge is shown in stages/judge_prompts.py, direct scoring in
stages/direct_scoring.py.
"""

from __future__ import annotations

from array import array
from pathlib import Path
from typing import Iterable, Iterator, Literal

from pydantic import Field, model_validator

from rlaif.backends.base import Engine, GenerationRequest, OptionRequest
from rlaif.config import Strict, config_hash, validate
from rlaif.constitution import Constitution, load_constitution
from rlaif.errors import UserError
from rlaif.records import Reread, record_id, request_seed, write_jsonl_atomic
from rlaif.manifest import read_manifest, update_manifest
from rlaif.runner import OutputLock, StageResult, independent_requests, run_stage
from rlaif.stages.direct_scoring import score_requests
from rlaif.stages.judge_prompts import (conversation_text, cut, direct_score_requests, draw_principles, format_examples,
                                        sanitize)
from rlaif.stages.pair_inputs import PairsFile
from rlaif.stages.soft_labels import OPTIONS, aggregate, clamp, p_a_from_vote, pair_label_from_scores, soft_label
from rlaif.templates import Template, load_template

STAGE = "label"
LABELS = "labels.jsonl"
PREFERENCES = "preferences.jsonl"


class LabelerConfig(Strict):
    """Settings of the labeler (one YAML block in a pipeline; the CLI flags map onto it)."""

    mode: Literal["pairwise", "direct"] = "pairwise"
    debias: bool = True  # judge both orders and average
    cot: bool = False  # rationale first, then the options
    clamp: tuple[float, float] = (0.4, 0.6)  # band for CoT votes
    cot_max_tokens: int = Field(64, ge=1)
    cot_temperature: float = Field(0.0, ge=0)  # 0: greedy rationale (self_consistency = 1)
    self_consistency: int = Field(1, ge=1)  # sampled rationales per (principle, order)
    sc_temperature: float = Field(0.7, gt=0)
    principles: int = Field(1, ge=1)  # principle ensemble size
    few_shot: int = Field(0, ge=0)
    margin: float = Field(0.0, ge=0, lt=0.5)  # |p − 0.5| < margin: "within margin"
    drop_within_margin: bool = False  # leave such pairs out of preferences.jsonl
    seed: int = 0
    max_conversation_chars: int = Field(3000, ge=200)  # older turns cut first
    max_response_chars: int = Field(1500, ge=100)
    pairwise_template: str = "label_pairwise"
    cot_template: str = "label_cot"
    direct_template: str = "label_direct"

    @model_validator(mode="after")
    def _consistent(self):
        lo, hi = self.clamp
        if not 0 <= lo <= 0.5 <= hi <= 1:
            raise ValueError(f"clamp: expected 0 <= lo <= 0.5 <= hi <= 1, got [{lo}, {hi}]")
        if self.self_consistency > 1 and not self.cot:
            raise ValueError("self_consistency > 1 samples rationales, so it needs cot")
        if self.mode == "direct" and self.cot:
            raise ValueError("direct scoring reads the score right away; it cannot be combined with cot")
        return self


def make_config(source: str = "labeler options", **values) -> LabelerConfig:
    """A LabelerConfig from keyword values; problems become one UserError line."""
    from pydantic import ValidationError

    data = {k: v for k, v in values.items() if v is not None}
    try:
        return LabelerConfig.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        if not first["loc"] and first["type"] == "value_error":  # a rule across fields
            raise UserError(f"{source}: {str(first['ctx']['error'])}") from None
    return validate(LabelerConfig, data, source)


# ------------------------------------------------------------------ the stage


def label_inputs(pairs: Iterable[dict], constitution: Constitution, cfg: LabelerConfig,
                 template_ids: dict, judge: str = "") -> list[dict]:
    """One runner input per pair: a stable id and the principles drawn for it. A pair that names
    its `principle` (a constitution's check pair) is judged by that one alone. The id includes the
    `judge` ("engine:model"), so another judge in the same folder labels the pairs afresh."""
    return list(iter_label_inputs(pairs, constitution, cfg, template_ids, judge))


def iter_label_inputs(pairs: Iterable[dict], constitution: Constitution, cfg: LabelerConfig,
                      template_ids: dict, judge: str = "") -> Iterator[dict]:
    """`label_inputs` a pair at a time."""
    chash, stage_cfg = config_hash(constitution), cfg.model_dump(mode="json")
    ids = {q.id for q in constitution.principles}
    for p in pairs:
        key = record_id(p["prompt"], p["a"], p["b"])
        named = p.get("principle")
        if named is not None and named not in ids:
            raise UserError(f"pair {p.get('source_line')}: principle {named!r} is not the id of a principle "
                            f"in constitution {constitution.name} (ids: {', '.join(sorted(ids))})")
        principles = [named] if named is not None else [q.id for q in draw_principles(constitution, cfg.seed, key,
                                                                                      cfg.principles)]
        yield {**p, "id": record_id(STAGE, key, chash, stage_cfg, template_ids, *([named] if named else []),
                                    *([judge] if judge else [])),
               "principles": principles}


def judged_length(rec: dict, cfg: LabelerConfig) -> int:
    """Characters of conversation and replies the judge reads for a pair (after the cuts): the
    runner batches pairs of similar length together, which keeps padding small."""
    conv = sum(len(m["content"]) for m in rec["prompt"] if m["role"] != "system")
    return (min(conv, cfg.max_conversation_chars) + min(len(rec["a"]), cfg.max_response_chars)
            + min(len(rec["b"]), cfg.max_response_chars))


def templates_for(cfg: LabelerConfig) -> dict[str, Template]:
    if cfg.mode == "direct":
        return {"direct": load_template(cfg.direct_template)}
    return {"cot": load_template(cfg.cot_template)} if cfg.cot else {"pairwise": load_template(cfg.pairwise_template)}


def _pair_votes(engine: Engine, constitution: Constitution, cfg: LabelerConfig, template: Template,
                batch: list[dict]) -> list[list[dict]]:
    """Every (principle, order, sample) vote of every pair in the batch, in two engine calls at most."""
    orders = ("ab", "ba") if cfg.debias else ("ab",)
    jobs = []  # (pair index, principle id, order, values)
    for i, rec in enumerate(batch):
        conv = conversation_text(rec["prompt"], cfg.max_conversation_chars)
        a = sanitize(cut(rec["a"].strip(), cfg.max_response_chars))
        b = sanitize(cut(rec["b"].strip(), cfg.max_response_chars))
        for pid in rec["principles"]:
            pr = constitution.principle(pid)
            examples = format_examples(constitution, pr, cfg.few_shot) if cfg.few_shot else ""
            for order in orders:
                first, second = (a, b) if order == "ab" else (b, a)
                jobs.append((i, pid, order, {"examples": examples, "conversation": conv, "response_a": first,
                                             "response_b": second, "question": pr.comparison_question.strip()}))
    requests, meta = [], []
    if cfg.cot:
        samples = cfg.self_consistency
        temp = cfg.sc_temperature if samples > 1 else cfg.cot_temperature
        gens = engine.generate([GenerationRequest(template.render(**v), temperature=temp, max_tokens=cfg.cot_max_tokens,
                                                  n=samples, seed=request_seed(cfg.seed, batch[i]["id"], pid, order))
                                for i, pid, order, v in jobs])
        for (i, pid, order, v), gen in zip(jobs, gens):
            for text in gen.texts:
                rationale = sanitize(text.strip())
                requests.append(OptionRequest(template.render(**v), template.render_prefill(rationale=rationale, **v)))
                meta.append((i, pid, order, rationale))
    else:
        for i, pid, order, v in jobs:
            requests.append(OptionRequest(template.render(**v), template.render_prefill(**v)))
            meta.append((i, pid, order, None))
    logprobs = engine.option_logprobs(requests, list(OPTIONS))
    votes: list[list[dict]] = [[] for _ in batch]
    for (i, pid, order, rationale), lp in zip(meta, logprobs):
        p_first = soft_label(lp)
        p_raw = p_first
        if cfg.cot:
            p_first = clamp(p_first, cfg.clamp)
        vote = {"principle": pid, "order": order, "p_first": p_first, "p_first_raw": p_raw,
                "p_a": p_a_from_vote(p_first, order), "rationale": rationale,
                "floored": list(getattr(lp, "floored", ()))}
        votes[i].append(vote)
    return votes


def _direct_votes(engine: Engine, constitution: Constitution, cfg: LabelerConfig, template: Template,
                  batch: list[dict]) -> list[list[dict]]:
    convs, resps, qs, meta = [], [], [], []
    for i, rec in enumerate(batch):
        conv = conversation_text(rec["prompt"], cfg.max_conversation_chars)
        for pid in rec["principles"]:
            q = constitution.principle(pid).comparison_question
            for side in ("a", "b"):
                convs.append(conv)
                resps.append(rec[side])
                qs.append(q)
                meta.append((i, pid, side))
    scored = score_requests(engine, direct_score_requests(template, convs, resps, qs, cfg.max_response_chars))
    per: dict[tuple, dict] = {(i, pid, side): s for (i, pid, side), s in zip(meta, scored)}
    votes: list[list[dict]] = [[] for _ in batch]
    for i, rec in enumerate(batch):
        for pid in rec["principles"]:
            sa, sb = per[(i, pid, "a")], per[(i, pid, "b")]
            votes[i].append({"principle": pid, "order": "direct", "score_a": sa["score"], "score_b": sb["score"],
                             "distribution_a": sa["distribution"], "distribution_b": sb["distribution"],
                             "p_a": pair_label_from_scores(sa["score"], sb["score"]), "rationale": None,
                             "floored": sorted(set(sa["floored"]) | set(sb["floored"]))})
    return votes


def make_process(engine: Engine, constitution: Constitution, cfg: LabelerConfig, templates: dict[str, Template]):
    """`process(batch) -> preference records`: pure over the batch and the engine."""
    (kind, template), = templates.items()
    labeler = {"engine": engine.name, "model": engine.model, "template": template.id, "mode": cfg.mode,
               "debias": cfg.debias and cfg.mode == "pairwise", "cot": cfg.cot,
               "principles": cfg.principles, "self_consistency": cfg.self_consistency, "few_shot": cfg.few_shot,
               "clamp": list(cfg.clamp) if cfg.cot else None,
               "constitution": {"name": constitution.name, "version": constitution.version}}

    def process(batch: list[dict]) -> list[dict]:
        if kind == "direct":
            all_votes = _direct_votes(engine, constitution, cfg, template, batch)
        else:
            all_votes = _pair_votes(engine, constitution, cfg, template, batch)
        out = []
        for rec, votes in zip(batch, all_votes):
            if kind == "direct":
                p_a = sum(v["p_a"] for v in votes) / len(votes)
                by_order = {"ab": None, "ba": None}
            else:
                p_a, by_order = aggregate(votes)
            a_wins = p_a >= 0.5
            win, lose = (rec["a"], rec["b"]) if a_wins else (rec["b"], rec["a"])
            rationales = [v["rationale"] for v in votes if v["rationale"]]
            out.append({
                "id": rec["id"], "prompt": rec["prompt"],
                "chosen": [{"role": "assistant", "content": win}],
                "rejected": [{"role": "assistant", "content": lose}],
                "p_chosen": p_a if a_wins else 1.0 - p_a,
                "chosen_is": "a" if a_wins else "b", "p_a": p_a,
                "labels_by_order": by_order,
                "principle": "+".join(rec["principles"]), "principles": rec["principles"],
                "rationale": rationales[0] if rationales else None,
                "votes": votes,
                "within_margin": abs(p_a - 0.5) < cfg.margin,
                "labeler": labeler,
                "given": rec["given"], "source_line": rec["source_line"], "source_id": rec["source_id"],
                **({"human_chosen": rec["human_chosen"]} if "human_chosen" in rec else {}),
            })
        return out

    return process


def label_pairs(pairs: Iterable[dict], constitution: Constitution, engine: Engine, cfg: LabelerConfig,
                out_dir: str | Path, *, batch_size: int = 8, overwrite: bool = False,
                progress: bool = True, output: str = LABELS) -> StageResult:
    """Label normalised pairs (a list, or a `PairsFile` streamed from disk) into
    `out_dir/labels.jsonl` (resumable, via the runner)."""
    templates = templates_for(cfg)
    template_ids = {k: t.id for k, t in templates.items()}
    judge = f"{engine.name}:{engine.model}"
    if isinstance(pairs, Reread):
        inputs = Reread(lambda: iter_label_inputs(pairs, constitution, cfg, template_ids, judge))
    else:
        inputs = label_inputs(pairs, constitution, cfg, template_ids, judge)
    return run_stage(
        STAGE, inputs, make_process(engine, constitution, cfg, templates), out_dir,
        config={"labeler": cfg.model_dump(mode="json"), "templates": template_ids,
                "constitution": {"name": constitution.name, "version": constitution.version,
                                 "hash": config_hash(constitution)},
                "labeler_model": engine.model},
        batch_size=batch_size, output=output, overwrite=overwrite, progress=progress,
        stats=getattr(engine, "stats", None), batch_key=lambda rec: judged_length(rec, cfg),
        fixed_batches=not independent_requests(engine))


def run_label(pairs_path, constitution, engine: Engine, out_dir, cfg: LabelerConfig, *,
              batch_size: int = 8, overwrite: bool = False, progress: bool = True) -> dict:
    """`rlaif label`: label a pairs file; write labels.jsonl (all pairs) and preferences.jsonl
    (pairs kept after the margin rule). Returns a summary. The file is streamed, never held: the
    memory it takes grows with the number of pairs by their ids alone. `pairs_path`: a path, or a
    `PairsFile` (checked once, whoever checks it first)."""
    pairs = pairs_path if isinstance(pairs_path, PairsFile) else PairsFile(pairs_path)
    pairs.check()
    if not isinstance(constitution, Constitution):
        constitution = load_constitution(constitution)
    out_dir = Path(out_dir)
    with OutputLock(out_dir):
        result = label_pairs(pairs, constitution, engine, cfg, out_dir, batch_size=batch_size,
                             overwrite=overwrite, progress=progress)
        kept = within = 0
        ab, ba = array("d"), array("d")  # the two orders' labels, for the flip rate

        def preferences():  # one pass over labels.jsonl, streamed
            nonlocal kept, within
            for r in result.records:
                within += r["within_margin"]
                if r["labels_by_order"]["ba"] is not None:
                    ab.append(r["labels_by_order"]["ab"])
                    ba.append(r["labels_by_order"]["ba"])
                if not (cfg.drop_within_margin and r["within_margin"]):
                    kept += 1
                    yield r

        write_jsonl_atomic(out_dir / PREFERENCES, preferences())
        from rlaif.metrics import order_ties, position_flip_rate

        summary = {"out_dir": str(out_dir), "pairs": result.total, "skipped_inputs": pairs.skipped,
                   "written": result.written, "done_before": result.done_before, "failed": result.failed,
                   "within_margin": within, "preferences": kept, "seconds": round(result.seconds, 1),
                   "position_flip_rate": round(position_flip_rate(ab, ba), 4) if ab else None,
                   "position_order_ties": order_ties(ab, ba) if ab else None}
        entry = read_manifest(out_dir).get("stages", {}).get(STAGE, {})
        update_manifest(out_dir, STAGE, {**entry, "summary": summary, "derived": {"preferences": PREFERENCES}})
    return summary
