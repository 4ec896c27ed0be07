"""Iterative (online) RLAIF: rounds of sample → judge → train, each round starting from the policy
the last one trained. The pipeline's `rounds:` block; `rlaif run pipelines/iterative_dpo.yaml`.

Round k = 1..K works in OUT/rounds/round_k/:

    responses/   N samples per prompt from policy_{k−1} (temperature T; seeds depend on the round)
    label/       the judge's labels, by `pairing`:
                   best_worst  every sample's direct 1–10 score; per prompt the pair (best, worst),
                               a hard label (p = 1); prompts whose samples all score alike give none
                   all_pairs   every pair of distinct samples judged pairwise, both orders; a hard
                               label on the side the judge preferred (p = ½ pairs are dropped)
                   soft_pairs  the same judgements, the soft label p kept (DPO's soft targets)
                 -> preferences.jsonl (the shape `rlaif dpo` / `rlaif kto` read)
    policy/      policy_k: DPO, IPO or KTO from policy_{k−1}. The reference is policy_{k−1}
                 (`reference: previous`, the usual iterative-DPO choice) or the start
                 (`reference: start`); both names are recorded in rounds.json.
    eval/        policy_k on the held-out prompts (rlaif/eval/round_eval.py): KL to the start,
                 the judge's direct score (the proxy reward), an independent judge's score.

The start is the SL-CAI model when the pipeline has an `sft` stage, else the policy role's model.
Prompts per round are fresh (round k takes the k-th slice of `prompts_per_round` training prompts)
or the same slice every round (`fresh_prompts: false`).

Everything resumes: the record stages through the runner, training through the pipeline's done
keys, so a run killed in round k and started again redoes only what was not finished, and gives
the files an uninterrupted run gives. After the last round: the ranking of every checkpoint
(rlaif rank: Bradley–Terry ratings, win rates, length-controlled win rates) in OUT/rounds/ranking/,
the reward-vs-KL plot across rounds, and OUT/rounds/rounds.json.
"""

from __future__ import annotations

import json
from collections import defaultdict
from itertools import combinations
from pathlib import Path

from rlaif.errors import UserError
from rlaif.pipeline_config import RoundsConfig, trainer
from rlaif.records import record_id, write_atomic, write_jsonl_atomic
from rlaif.backends.base import independent_requests
from rlaif.runner import run_stage


def round_prompts(pool: list[dict], rounds: RoundsConfig, k: int) -> list[dict]:
    n = rounds.prompts_per_round
    start = (k - 1) * n if rounds.fresh_prompts else 0
    return pool[start:start + n]


# ---------------------------------------------------------------- pairs from the judge


def best_worst_preferences(samples: list[dict], scores: dict[str, float]) -> tuple[list[dict], int]:
    """Per prompt, (best, worst) by the judge's direct score; ties (all alike) give no pair.
    Samples are taken in sample order, so among equal scores the first one counts."""
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        by_prompt[s["prompt_id"]].append(s)
    prefs, ties = [], 0
    for group in by_prompt.values():
        group.sort(key=lambda s: s["sample"])
        best = max(group, key=lambda s: scores[s["id"]])
        worst = min(group, key=lambda s: scores[s["id"]])
        if scores[best["id"]] == scores[worst["id"]] or best["response"].strip() == worst["response"].strip():
            ties += 1
            continue
        prefs.append({"id": record_id("best_worst", best["id"], worst["id"]), "prompt": best["prompt"],
                      "chosen": [{"role": "assistant", "content": best["response"]}],
                      "rejected": [{"role": "assistant", "content": worst["response"]}], "p_chosen": 1.0,
                      "score_chosen": scores[best["id"]], "score_rejected": scores[worst["id"]]})
    return prefs, ties


def sample_pairs(samples: list[dict]) -> list[dict]:
    """Every pair of distinct samples of a prompt, unordered, for the pairwise judge."""
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        by_prompt[s["prompt_id"]].append(s)
    pairs = []
    for group in by_prompt.values():
        group.sort(key=lambda s: s["sample"])
        seen = set()
        for a, b in combinations(group, 2):
            key = tuple(sorted((a["response"].strip(), b["response"].strip())))
            if key[0] == key[1] or key in seen:
                continue
            seen.add(key)
            pairs.append({"id": record_id("sample_pair", a["id"], b["id"]), "prompt": a["prompt"],
                          "response_a": a["response"], "response_b": b["response"]})
    return pairs


def pairwise_preferences(labels: list[dict], hard: bool) -> tuple[list[dict], int]:
    """The labeler's preference records; hard: p_chosen = 1 (the judge's p kept as p_judge), and
    pairs the judge left at exactly ½ dropped."""
    if not hard:
        return list(labels), 0
    kept = [{**r, "p_judge": r["p_chosen"], "p_chosen": 1.0} for r in labels if r["p_chosen"] != 0.5]
    return kept, len(labels) - len(kept)


# ---------------------------------------------------------------- one round


class Rounds:
    """The rounds of one pipeline run (`p`: rlaif.pipeline.Pipeline, which owns the engines, the
    training done keys and the output folder)."""

    def __init__(self, p):
        self.p, self.cfg = p, p.cfg.rounds
        self.dir = p.out / "rounds"
        self.start = p.start_policy()

    def policy_engine(self, model: str):
        from rlaif.backends import load_engine

        return load_engine(self.p.roles["policy"].model_copy(update={"model": model}))

    def sample(self, model: str, prompts: list[dict], out: Path, k: int) -> list[dict]:
        from rlaif.stages.responses import ResponsesConfig, check_context, expand, make_process

        rc = ResponsesConfig(n=self.cfg.samples, max_tokens=self.cfg.max_tokens, temperature=self.cfg.temperature,
                             seed=self.p.cfg.seed * 1000 + k)
        engine = self.policy_engine(model)
        try:
            check_context(engine, prompts, rc.max_tokens, self.p.cfg.prompts.file)
            result = run_stage("responses", expand(prompts, engine.model, rc), make_process(engine, rc), out,
                               config=rc, batch_size=self.p.batch_size("policy"), overwrite=self.p.overwrite,
                               stats=getattr(engine, "stats", None), fixed_batches=not independent_requests(engine))
        finally:
            engine.close()
        self.p.failed += result.failed
        return result.records

    def label(self, samples: list[dict], out: Path) -> dict:
        """-> summary; writes out/preferences.jsonl."""
        out.mkdir(parents=True, exist_ok=True)
        judge = self.p.judge()
        if self.cfg.pairing == "best_worst":
            from rlaif.eval.round_eval import direct_score_stage

            scored = direct_score_stage(samples, judge, out, "scores", batch_size=self.p.batch_size("judge"),
                                        overwrite=self.p.overwrite)
            self.p.failed += scored.failed
            scores = {r["id"]: r["score"] for r in scored.records}
            prefs, dropped = best_worst_preferences([s for s in samples if s["id"] in scores], scores)
            info = {"scored": len(scores), "failed": scored.failed}
        else:
            from rlaif.stages.labeler import label_pairs
            from rlaif.stages.pair_inputs import normalize_pairs

            pairs = sample_pairs(samples)
            if not pairs:
                raise UserError(f"{out}: every prompt's samples are identical; nothing to judge (raise "
                                "rounds.temperature or rounds.samples)")
            write_jsonl_atomic(out / "pairs.jsonl", pairs)
            result = label_pairs(normalize_pairs(pairs, str(out / "pairs.jsonl"))[0], judge, out,
                                 batch_size=self.p.batch_size("judge"), overwrite=self.p.overwrite)
            self.p.failed += result.failed
            prefs, dropped = pairwise_preferences(result.records, hard=self.cfg.pairing == "all_pairs")
            info = {"pairs_judged": len(result.records), "failed": result.failed}
        write_jsonl_atomic(out / "preferences.jsonl", prefs)
        return {**info, "preferences": len(prefs), "no_pair": dropped}

    def train(self, k: int, previous: str, prefs: Path) -> dict:
        reference = previous if self.cfg.reference == "previous" else self.start
        data = {"data": str(prefs)} if self.cfg.trainer == "kto" else {"prefs": str(prefs)}
        fields = {**data, "policy": previous, "reference": None if reference == previous else reference,
                  "seed": self.p.cfg.seed + k}
        cls, fn, block = trainer(self.cfg)  # the block was validated when the pipeline loaded
        result = self.p.train(f"rounds/round_{k}/policy", cls, fields, fn, block=block)
        return {**{key: result.get(key) for key in ("steps", "loss_start", "loss_end", "margin_end")},
                "policy_from": previous, "reference": reference}

    def evaluate(self, name: str, model: str, held_out: list[dict], out: Path) -> dict:
        from rlaif.eval.round_eval import evaluate_checkpoint

        info = evaluate_checkpoint(self, name, model, held_out, out)
        self.p.failed += info.pop("failed", 0)
        return info

    def run(self) -> dict:
        from rlaif.prompts_io import held_out_prompts
        from rlaif.prompts_io import read_prompts

        pool = read_prompts(self.p.cfg.prompts.file)[: self.p.cfg.prompts.limit]
        held_out = held_out_prompts(self.p.cfg, "pipeline", self.cfg.eval)
        rows = [{"round": 0, "checkpoint": "start", "model": self.start,
                 **self.evaluate("start", self.start, held_out, self.dir / "start_eval")}]
        previous = self.start
        for k in range(1, self.cfg.count + 1):
            rdir = self.dir / f"round_{k}"
            print(f"== round {k}/{self.cfg.count}", flush=True)
            prompts = round_prompts(pool, self.cfg, k)
            samples = self.sample(previous, prompts, rdir / "responses", k)
            labeled = self.label(samples, rdir / "label")
            if not labeled["preferences"]:
                raise UserError(f"{rdir / 'label'}: round {k} gave no preference pairs (every prompt's samples "
                                "were judged alike); raise rounds.samples or rounds.temperature")
            trained = self.train(k, previous, rdir / "label" / "preferences.jsonl")
            previous = str(rdir / "policy")
            rows.append({"round": k, "checkpoint": f"round {k}", "model": previous, "prompts": len(prompts),
                         "samples": len(samples), **labeled, **trained,
                         **self.evaluate(f"round {k}", previous, held_out, rdir / "eval")})
        info = {"rounds": rows, "trainer": self.cfg.trainer, "pairing": self.cfg.pairing,
                "reference": self.cfg.reference, "start": self.start, "held_out_prompts": len(held_out)}
        if self.cfg.eval.rank:
            info["ranking"] = self.rank(rows, held_out)
        from rlaif.eval.round_eval import plot_rounds

        info["plot"] = str(plot_rounds(rows, self.dir / "reward_vs_kl.png"))
        write_atomic(self.dir / "rounds.json", json.dumps(info, indent=2, default=str) + "\n")
        return {"rounds": self.cfg.count, "final_kl": rows[-1].get("kl"), "final_reward": rows[-1].get("reward"),
                "start_reward": rows[0].get("reward")}

    def rank(self, rows: list[dict], held_out: list[dict]) -> dict:
        from rlaif.eval.rank_cmd import Checkpoint, rank

        policy = self.p.roles["policy"]
        checkpoints = [Checkpoint(r["checkpoint"], "model", engine=policy.model_copy(update={"model": r["model"]}))
                       for r in rows]
        self.p.close(keep=("judge",))
        info = rank(checkpoints, held_out, self.p.judge(), self.dir / "ranking",
                    max_tokens=self.cfg.eval.max_tokens, seed=self.p.cfg.seed, n_boot=self.cfg.eval.bootstrap,
                    batch_size=self.p.batch_size("judge"), source="held-out prompts", overwrite=self.p.overwrite,
                    judge_check=False)  # the pipeline checked its judge before the rounds
        self.p.failed += info["setup"]["failed_judgements"]
        return {r["name"]: {k: r.get(k) for k in ("rank", "elo", "ci95", "lc_vs_baseline", "lc_vs_baseline_ci95",
                                                  "raw_vs_baseline", "raw_vs_baseline_ci95", "lc_variant")}
                for r in info["players"]}
