"""KTO (Ethayarajh et al. 2024, "Model Alignment as Prospect Theoretic Optimization"): alignment from
completions labelled desirable or undesirable one at a time, no pairs needed.

With the policy's and the frozen reference's log-probabilities of a completion (summed over its
tokens, prompt masked), the implied reward is r(x, y) = log π(y|x) − log π_ref(y|x), and the
reference point is the policy's KL from the reference, estimated on mismatched pairs:

    z_ref = max(0, mean_i [log π(y_{i−1} | x_i) − log π_ref(y_{i−1} | x_i)])      (no gradient)

where, in each batch, prompt x_i is paired with the completion of the example before it (the first
with the last one's): TRL's rotation, here over the global batch (TRL rotates each device's batch),
so a run gives the same losses on any number of processes. Where a batch holds several examples of
one prompt (both sides of a pair, from `pairs` data), the rotation would pair a prompt with its own
other side; `kl_pairs` then shifts by more so that every prompt meets another prompt's completion
(TRL avoids it by listing every chosen side before every rejected one). The value of an example is

    v(x, y) = λ_D · σ(β (r(x, y) − z_ref))    if y is desirable
              λ_U · σ(β (z_ref − r(x, y)))    if y is undesirable

and the loss is the batch mean of λ_y − v(x, y) (the paper's eq. 7; TRL's `loss_type="kto"`). The
paper advises λ_D·n_D / (λ_U·n_U) in [1, 4/3]; the summary reports that ratio as `weighted_balance`.

Data (`data_format`, `auto` decides from the first record's fields):
- `unpaired`: TRL's shape, `prompt`, `completion`, `label` (true = desirable);
- `scores`: `prompt`, `completion`, `score` in [0, 1] (e.g. the labeler's direct score): desirable
  when score ≥ `score_threshold`;
- `pairs`: preference records (`prompt`, `chosen`, `rejected`, `p_chosen`): the preferred side
  desirable, the other undesirable (TRL's `unpair_preference_dataset`), only where
  |p_chosen − ½| > `pair_margin`; closer pairs are skipped and counted (`skipped_records`).

The reference log-probs are computed once, before the first update, with the starting weights (the
policy is the reference then): for every example, and for every mismatched pair the training order
will form — no second model in memory. Dropout is off, as TRL does. Evaluation estimates z_ref once
over the whole eval file (each prompt with another prompt's completion, `kl_pairs` over all of it).

Run: `accelerate launch -m rlaif.train.kto CONFIG.yaml` (or `python -m rlaif.train.kto CONFIG.yaml`).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal, Sequence

import torch
from pydantic import Field, model_validator

from rlaif.errors import UserError
from rlaif.records import read_jsonl
from rlaif.train.config import ReferencedConfig
from rlaif.train.encoding import encode, render_completion
from rlaif.train.examples import (Messages, Skipped, UnusablePair, pad, pad_id, padded, parse_pair,
                                  parse_prompt_completion)
from rlaif.train.maths import sequence_logps
from rlaif.train.models import LoraSettings, load_policy, reference_model, start_training
from rlaif.train.run_log import gather_mean, gather_sum
from rlaif.train.trainer import Run, example_stream, run_main


class KTOConfig(ReferencedConfig):
    data: str | None = Field(None, description="JSONL: unpaired (label), scored (score) or preference pairs")
    data_format: Literal["auto", "unpaired", "scores", "pairs"] = Field(
        "auto", description="how the data file is read: unpaired, scored or preference records (auto: by its "
                            "fields)")
    score_threshold: float = Field(0.5, ge=0, le=1, description="scores: desirable when score ≥ threshold")
    pair_margin: float = Field(0.0, ge=0, lt=0.5, description="pairs: used only where |p_chosen − 0.5| > margin")
    beta: float = Field(0.1, gt=0, description="β: the strength of the KL constraint to the reference")
    desirable_weight: float = Field(1.0, gt=0, description="λ_D")
    undesirable_weight: float = Field(1.0, gt=0, description="λ_U")
    learning_rate: float = Field(5e-6, gt=0, description="peak learning rate of AdamW, reached after warmup_steps")
    lora: LoraSettings | None = Field(
        None, description="LoRA adapters (r, alpha, dropout, target modules); unset: every weight is trained")

    @model_validator(mode="after")
    def _kl_needs_a_batch(self):
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2: z_ref pairs each prompt with another example's "
                             "completion of its batch")
        return self


# the logged curves whose first and last values the summary gives, and those train_curves.png draws
CURVES = ("loss", "kl", "margin", "rewards_desirable", "rewards_undesirable", "eval_loss", "eval_margin")
PLOTTED = ("loss", "kl", "margin", "eval_margin")


# ---------------------------------------------------------------- records


@dataclass
class Unpaired:
    prompt: Messages | str
    completion: Messages | str
    desirable: bool
    conversational: bool = True


def parse_unpaired(rec: dict, where: str) -> Unpaired:
    """TRL's unpaired preference record: prompt, completion, label (true = desirable)."""
    ex = parse_prompt_completion(rec, where, "KTO")
    label = rec.get("label")
    if not isinstance(label, bool):
        raise UserError(f"{where}: field 'label': expected true (desirable) or false (undesirable), got {label!r}")
    return Unpaired(ex.prompt, ex.completion, label, ex.conversational)


def unpaired_from_score(rec: dict, where: str, threshold: float) -> Unpaired:
    """A scored completion: desirable when its score (in [0, 1]) is at least `threshold`."""
    score = rec.get("score")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= score <= 1.0:
        raise UserError(f"{where}: field 'score': expected a number in [0, 1], got {score!r}")
    ex = parse_prompt_completion(rec, where, "KTO")
    return Unpaired(ex.prompt, ex.completion, float(score) >= threshold, ex.conversational)


def unpaired_from_pair(rec: dict, where: str, margin: float = 0.0) -> list[Unpaired]:
    """A preference pair -> [preferred side desirable, other side undesirable]; `UnusablePair` when
    |p_chosen − 0.5| ≤ margin (the label says too little about which side is better)."""
    pair = parse_pair(rec, where)
    if abs(pair.p - 0.5) <= margin:
        raise UnusablePair(where, "within_pair_margin", f"p_chosen {pair.p} is within {margin} of 0.5")
    good, bad = (pair.chosen, pair.rejected) if pair.p > 0.5 else (pair.rejected, pair.chosen)
    return [Unpaired(pair.prompt, good, True, pair.conversational),
            Unpaired(pair.prompt, bad, False, pair.conversational)]


def detect_format(rec: dict, where: str) -> str:
    if "label" in rec:
        return "unpaired"
    if "score" in rec:
        return "scores"
    if "chosen" in rec or "rejected" in rec:
        return "pairs"
    raise UserError(f"{where}: field 'label': missing; expected a KTO record with prompt, completion and label "
                    "(true/false), a scored one (score in [0, 1]) or a preference pair (chosen, rejected)")


def read_kto(path: str | Path, data_format: str = "auto", threshold: float = 0.5,
             margin: float = 0.0) -> tuple[list[Unpaired], Counter, str]:
    """-> (examples, count of skipped records by reason, the format read)."""
    rows = read_jsonl(path)
    fmt = detect_format(rows[0], f"{path}:1") if data_format == "auto" else data_format
    examples: list[Unpaired] = []
    skipped = Skipped(path, len(rows))
    for i, rec in enumerate(rows, 1):
        where = f"{path}:{i}"
        try:
            if fmt == "unpaired":
                examples.append(parse_unpaired(rec, where))
            elif fmt == "scores":
                examples.append(unpaired_from_score(rec, where, threshold))
            else:
                examples += unpaired_from_pair(rec, where, margin)
        except UnusablePair as e:
            skipped.add(e.reason, i)
    if not examples:
        raise UserError(f"{path}: no usable KTO examples ({len(rows)} read; skipped: {dict(skipped)})")
    return examples, skipped, fmt


# ---------------------------------------------------------------- the loss


def kl_reference_point(kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor, accelerator=None) -> torch.Tensor:
    """z_ref = max(0, mean of log π − log π_ref over the mismatched pairs), no gradient; the mean
    is over the global batch (every process holds an equal share of it)."""
    kl = (kl_logps - ref_kl_logps).mean().detach()
    if accelerator is not None:
        kl = accelerator.gather(kl.reshape(1)).mean()
    return kl.clamp(min=0)


def kto_loss(logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor, z_ref: torch.Tensor | float,
             beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
    """-> (per-example losses λ_y − v(x, y), rewards β·r (detached)); see the module docstring."""
    r = logps - ref_logps
    desirable = desirable.to(torch.bool).to(r.device)
    value = torch.where(desirable, desirable_weight * torch.sigmoid(beta * (r - z_ref)),
                        undesirable_weight * torch.sigmoid(beta * (z_ref - r)))
    weight = torch.where(desirable, desirable_weight, undesirable_weight).to(r.dtype)
    return weight - value, beta * r.detach()


def kto_metrics(losses, rewards, desirable, z_ref) -> dict[str, torch.Tensor]:
    """Loss and z_ref of a batch, and sums/counts of the rewards by label (summed over micro-batches
    and processes before they are divided)."""
    d = desirable.to(torch.bool).to(rewards.device)
    return {"loss": losses.detach().mean(), "kl": torch.as_tensor(z_ref, device=rewards.device).float(),
            "reward_sum_desirable": rewards[d].sum(), "n_desirable": d.sum().float(),
            "reward_sum_undesirable": rewards[~d].sum(), "n_undesirable": (~d).sum().float()}


def reward_means(sums: dict[str, float]) -> dict[str, float]:
    out = {}
    for side in ("desirable", "undesirable"):
        if sums[f"n_{side}"]:
            out[f"rewards_{side}"] = sums[f"reward_sum_{side}"] / sums[f"n_{side}"]
    if len(out) == 2:
        out["margin"] = out["rewards_desirable"] - out["rewards_undesirable"]
    return out


# ---------------------------------------------------------------- batches and forward


def kl_pairs(idx: Sequence[int], keys: Sequence[str] | None = None) -> list[tuple[int, int]]:
    """(prompt, completion) of the KL batch, in the batch's order: each example's prompt with the
    previous example's completion, the first with the last one's (TRL: `[completions[-1]] +
    completions[:-1]`). With `keys` (each example's prompt, by example index) the batch is first
    grouped by prompt, in order of first appearance, and each example takes the completion L places
    back in that order, L the largest group's size: a group is a run of at most L places, so it
    never meets itself. Distinct prompts give the plain rotation; one prompt holding more than half
    the batch leaves 2L − n matched pairs, the fewest any pairing can."""
    idx = list(idx)
    if keys is None:
        return list(zip(idx, idx[-1:] + idx[:-1]))
    first: dict[str, int] = {}
    for i in idx:
        first.setdefault(keys[i], len(first))
    grouped = sorted(range(len(idx)), key=lambda k: (first[keys[idx[k]]], k))
    shift = max(Counter(keys[i] for i in idx).values())
    partner = {k: grouped[(r - shift) % len(idx)] for r, k in enumerate(grouped)}
    return [(idx[k], idx[partner[k]]) for k in range(len(idx))]


def prompt_keys(examples: Sequence[Unpaired]) -> list[str]:
    return [json.dumps(e.prompt, sort_keys=True, ensure_ascii=False) for e in examples]


class KTOBatches:
    """Tokenised examples -> right-padded batches of (prompt a, completion b) sequences."""

    def __init__(self, tokenizer, examples: Sequence[Unpaired], max_length: int, max_prompt_length: int | None = None,
                 system_prompt: str | None = None):
        self.pad = pad_id(tokenizer)
        self.max_length = max_length
        self.prompts, self.completions = [], []
        for e in examples:  # the prompt cut as `encode` cuts it; the completion whole, cut per sequence below
            ids, mask = encode(tokenizer, e.prompt, e.completion, max_length, max_prompt_length, system_prompt)
            self.prompts.append(ids[:len(mask) - sum(mask)])
            text = render_completion(tokenizer, e.prompt, e.completion, system_prompt)
            self.completions.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        self.desirable = torch.tensor([e.desirable for e in examples], dtype=torch.bool)
        self.prompt_keys = prompt_keys(examples)

    def kl_pairs(self, idx: Sequence[int]) -> list[tuple[int, int]]:
        """`kl_pairs` over these examples, a prompt never with its own completion where avoidable."""
        return kl_pairs(idx, self.prompt_keys)

    def sequences(self, pairs: Sequence[tuple[int, int]]) -> dict:
        """Prompt of a, then completion of b cut to max_length, for each (a, b)."""
        seqs, masks = [], []
        for a, b in pairs:
            p = self.prompts[a]
            c = self.completions[b][:self.max_length - len(p)]
            seqs.append(p + c)
            masks.append([0] * len(p) + [1] * len(c))
        ids, attention_mask = padded(seqs, self.pad)
        return {"input_ids": ids, "attention_mask": attention_mask, "completion_mask": pad(masks, 0)}

    def __call__(self, kl: list[tuple[int, int]]) -> dict:
        """A training batch from its KL pairs (`kl_pairs` of the global batch; a process collates its
        share): the examples a, and the KL sequences (prompt of a, completion of b)."""
        idx = [a for a, _ in kl]
        batch = self.sequences([(i, i) for i in idx])
        batch.update({f"KL_{k}": v for k, v in self.sequences(kl).items()})
        batch.update({"label": self.desirable[idx], "idx": torch.tensor(idx, dtype=torch.long),
                      "kl_completion": torch.tensor([b for _, b in kl], dtype=torch.long)})
        return batch


def completion_logps(model, batch: dict, prefix: str = "") -> torch.Tensor:
    """Σ log π over each sequence's completion tokens."""
    ids = batch[f"{prefix}input_ids"]
    logits = model(input_ids=ids, attention_mask=batch[f"{prefix}attention_mask"], use_cache=False).logits
    return sequence_logps(logits, ids, batch[f"{prefix}completion_mask"])


@torch.no_grad()
def logps_table(accelerator, model, batches: KTOBatches, pairs: Sequence[tuple[int, int]], batch_size: int):
    """log π(completion b | prompt a) for each (a, b) with the current weights, sharded over processes
    and gathered, so every process holds the whole table."""
    def collate(keys):
        return {**batches.sequences([pairs[k] for k in keys]), "key": torch.tensor(keys, dtype=torch.long)}

    loader = accelerator.prepare_data_loader(
        torch.utils.data.DataLoader(list(range(len(pairs))), batch_size=batch_size, collate_fn=collate))
    was_training = model.training
    model.eval()
    table = torch.zeros(len(pairs))
    for batch in loader:
        key, lp = accelerator.gather_for_metrics((batch["key"], completion_logps(model, batch).float()))
        table[key.cpu()] = lp.cpu()
    model.train(was_training)
    return table


@torch.no_grad()
def evaluate(accelerator, model, batches: KTOBatches, ref: torch.Tensor, ref_kl: torch.Tensor,
             cfg: KTOConfig) -> dict:
    """The loss and rewards over the whole eval file, with one z_ref estimated over all of it."""
    n = len(batches.desirable)
    logps = logps_table(accelerator, model, batches, [(i, i) for i in range(n)], cfg.eval_batch_size)
    kl = logps_table(accelerator, model, batches, batches.kl_pairs(range(n)), cfg.eval_batch_size)
    z = kl_reference_point(kl, ref_kl)
    losses, rewards = kto_loss(logps, ref, batches.desirable, z, cfg.beta, cfg.desirable_weight,
                               cfg.undesirable_weight)
    m = {k: v.item() for k, v in kto_metrics(losses, rewards, batches.desirable, z).items()}
    return {"loss": m["loss"], "kl": m["kl"], **reward_means(m)}


# ---------------------------------------------------------------- training


def kto_row(accelerator, micro: list[dict], step: int) -> dict:
    """A step's log row: the loss averaged over its micro-batches and the processes; z_ref (already
    the global batch's); the rewards by label from sums and counts gathered over all of them."""
    sums = {k: gather_sum(accelerator, torch.stack([m[k] for m in micro]).sum())
            for k in micro[0] if k.startswith(("reward_sum", "n_"))}
    return {"loss": gather_mean(accelerator, torch.stack([m["loss"] for m in micro]).mean()),
            "kl": torch.stack([m["kl"] for m in micro]).mean().item(), **reward_means(sums)}


def train_kto(cfg: KTOConfig) -> dict:
    if not cfg.data:
        raise UserError("kto: no data; set `data` (unpaired, scored or preference JSONL)")
    run = Run.start(cfg, "kto", cfg.policy)
    accelerator = run.accelerator
    read = dict(data_format=cfg.data_format, threshold=cfg.score_threshold, margin=cfg.pair_margin)
    examples, skipped, fmt = read_kto(cfg.data, **read)
    eval_examples, eval_skipped, _ = read_kto(cfg.eval_file, **read) if cfg.eval_file else (None, None, None)
    run.left_out(skipped, "skipped_records")
    if eval_examples:
        run.left_out(eval_skipped, "eval_skipped_records", "eval")
    model = start_training(load_policy(run.path, cfg.dtype, cfg.lora), cfg)

    steps, order = example_stream(cfg, len(examples))
    # the KL pairs are formed over each global batch here: each process then collates its share
    keys = prompt_keys(examples)
    stream = [p for s in range(0, len(order), cfg.batch_size) for p in kl_pairs(order[s:s + cfg.batch_size], keys)]
    batches = partial(KTOBatches, run.tokenizer, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                      system_prompt=cfg.system_prompt)
    collate = batches(examples)
    model, optimizer, loader, scheduler = run.prepare(model, stream, collate, steps)

    # reference log-probs, before any update: each example, and each mismatched pair of the training order
    train_kl = sorted(set(stream))
    evals = {}
    with reference_model(accelerator, model, run.tokenizer, cfg.reference, cfg.policy, cfg.dtype) as ref_model:
        table = partial(logps_table, accelerator, ref_model, batch_size=cfg.eval_batch_size)
        ref = table(collate, [(i, i) for i in range(len(examples))])
        ref_kl = dict(zip(train_kl, table(collate, train_kl).tolist()))
        if eval_examples:
            eval_batches = batches(eval_examples)
            n = len(eval_examples)
            evals["eval"] = partial(evaluate, accelerator, model, eval_batches,
                                    table(eval_batches, [(i, i) for i in range(n)]),
                                    table(eval_batches, eval_batches.kl_pairs(range(n))), cfg)

    def loss(batch, _):
        with torch.no_grad():
            kl_logps = completion_logps(model, batch, "KL_")
        logps = completion_logps(model, batch)
        idx, kl_completion = batch["idx"].tolist(), batch["kl_completion"].tolist()
        ref_b = ref[idx].to(logps.device)
        ref_kl_b = torch.tensor([ref_kl[p] for p in zip(idx, kl_completion)], device=logps.device)
        z = kl_reference_point(kl_logps, ref_kl_b, accelerator)
        losses, rewards = kto_loss(logps, ref_b, batch["label"], z, cfg.beta, cfg.desirable_weight,
                                   cfg.undesirable_weight)
        return losses.mean(), kto_metrics(losses, rewards, batch["label"], z)

    step = run.optimise(model, optimizer, scheduler, loader, steps, loss, evals, partial(kto_row, accelerator))
    n_d = int(collate.desirable.sum())
    n_u = len(examples) - n_d
    result = {"train_examples": len(examples), "desirable": n_d, "undesirable": n_u, "data_format": fmt,
              "weighted_balance": round(cfg.desirable_weight * n_d / (cfg.undesirable_weight * n_u), 4)
              if n_u else None}
    return run.finish(model, step, result, CURVES, PLOTTED, lora=bool(cfg.lora))


# `python -m rlaif.train.kto CONFIG.yaml [--set key=value ...]`, also under `accelerate launch -m`.
main = partial(run_main, KTOConfig, train_kto, "kto")


if __name__ == "__main__":
    sys.exit(main())
