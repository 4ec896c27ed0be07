"""Reward model on soft labels (distilled RLAIF).

A causal-LM backbone with one scalar head (`AutoModelForSequenceClassification`, `num_labels=1`),
trained on preference pairs with the soft-label Bradley–Terry loss

    L = -( p · log σ(r_c − r_r − m) + (1 − p) · log σ(r_r − r_c − m) )

where `p = p_chosen` is the labeler's probability that `chosen` is better and `m ≥ 0` an optional
margin: config `margin`, plus a record's own `margin` field (as TRL reads it), plus a margin from
the label's strength (config `margin_from_strength`, a scale s ≥ 0)

    m(p) = s · |2p − 1|

Llama 2 gave pairs a larger margin the larger the raters' preference gap ("significantly better"
vs "negligibly better"); a soft label's distance from 0.5 plays that part here: m(0.5) = 0 (a tie
asks for no gap), m(0) = m(1) = s, and m grows linearly in |p − 0.5| in between. At `p = 1` this is
TRL's reward loss `-log σ(r_c − r_r − m)`; at `p = 0.5` its gradient on `r_c − r_r` is zero at
`r_c = r_r` (the pair carries no preference). An optional `center_rewards_coefficient` adds
`c · mean((r_c + r_r)²)` (Eisenstein et al. 2023, as in TRL) to keep rewards centred.

Chosen and rejected go through one forward (concatenated on the batch axis), on the same prompt
tokens. A pair whose two sides fit `max_length` is read whole, as TRL's `RewardTrainer` reads it
(the first-step loss of both trainers is then the same on the same weights and pairs); a pair that
does not fit keeps the last `max_prompt_length` prompt tokens (default max_length // 2) on both
sides, so length cannot leak into the reward through the prompt window. An explicit
`max_prompt_length` cuts every prompt. Dropout is off while training, as TRL does. Implicit-prompt
records whose transcripts differ before the last assistant turn are skipped and counted
(`skipped_pairs` in the summary); upstream HH-RLHF eval files go through the HH reader, which skips
the same pairs (`prefix_mismatch`). The output folder is a
standard HF model dir: `AutoModelForSequenceClassification.from_pretrained(out)` scores text the way
training did (`RewardScorer` does exactly that, with the chat template).

Rankings of K replies (k-wise, as Starling-RM was trained on Nectar's 7-wise rankings; Zhu et al.
2023 show the K-wise maximum-likelihood estimator under the Plackett–Luce model): a record
`{"prompt", "ranked": [best, …, worst]}` is the event that the best reply is picked first from all
K, the next from the K − 1 left, and so on:

    P(τ | r) = Π_{k=1..K−1} exp(r_τk) / Σ_{j≥k} exp(r_τj)
    L = −log P(τ | r) = −Σ_{k=1..K−1} [ r_τk − log Σ_{j≥k} exp(r_τj) ]

At K = 2 it is −log σ(r_c − r_r), the Bradley–Terry loss at p = 1; a ranking counts as one example
(its K replies go through one forward), `batch_size` rankings a step. Its accuracy is the share of
its K(K − 1)/2 pairs the rewards order as the ranking does (ties half), its margin the mean gap of
neighbours, (r_τ1 − r_τK)/(K − 1). A file is read as rankings when its first record has `ranked`
(`rlaif rate` writes rankings.jsonl); margins are a pair's notion and are refused with rankings;
`center_rewards_coefficient` adds c·mean((Σ_k r_k)²), (r_c + r_r)² at K = 2.

Run: `rlaif train-rm --prefs FILE --out DIR`, or `accelerate launch -m rlaif.train.reward_model CONFIG.yaml`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from tqdm.auto import tqdm

from rlaif.config import DEFAULT_MODEL
from rlaif.errors import UserError
from rlaif.train.config import PairTrainConfig
from rlaif.train.encoding import encode_text
from rlaif.train.examples import (Messages, Pair, Skipped, field_messages, pad_id, padded, parse_pair, read_pairs,
                                  read_usable)
from rlaif.train.maths import pair_accuracy
from rlaif.train.models import disable_dropout, load_tokenizer, start_training, torch_dtype
from rlaif.train.trainer import Run, example_stream, run_main


class RewardConfig(PairTrainConfig):
    base: str = Field(DEFAULT_MODEL, description="backbone: embedded:NAME, a local dir or a hub id")
    prefs: str | None = Field(None, description="training preference JSONL (TRL conversational or plain strings)")
    human_eval_file: str | None = Field(
        None, description="human-labelled pairs (e.g. HH-RLHF converted), any preference JSONL")
    learning_rate: float = Field(2e-5, gt=0, description="peak learning rate of AdamW, reached after warmup_steps")
    margin: float = Field(
        0.0, ge=0, description="a Bradley-Terry margin per pair read from the records (Llama 2's margin loss)")
    margin_from_strength: float = Field(0.0, ge=0, description="s in m(p) = s·|2p − 1| (Llama 2's graded margin)")
    center_rewards_coefficient: float | None = Field(
        None, ge=0, description="weight of the penalty on the mean reward's square, which keeps rewards centred")


# the logged curves whose first and last values the summary gives, and those train_curves.png draws
CURVES = ("loss", "accuracy", "margin", "eval_accuracy", "human_accuracy")
PLOTTED = ("loss", "accuracy", "eval_accuracy", "human_accuracy")


# ---------------------------------------------------------------- the loss


def soft_bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, p: torch.Tensor | float = 1.0,
                 margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Per-pair soft-label Bradley–Terry loss (see the module docstring)."""
    d = r_chosen - r_rejected
    return -(p * F.logsigmoid(d - margin) + (1 - p) * F.logsigmoid(-d - margin))


def strength_margin(p: torch.Tensor, scale: float) -> torch.Tensor:
    """m(p) = scale · |2p − 1|: zero for a tie, `scale` for a certain label."""
    return scale * (2 * p - 1).abs()


def pair_margin(batch: dict, p: torch.Tensor, cfg: RewardConfig) -> torch.Tensor:
    """The margin of each pair: config `margin` + the record's `margin` + m(p)."""
    return cfg.margin + batch["margin"].to(p.dtype) + strength_margin(p, cfg.margin_from_strength)


# ---------------------------------------------------------------- model and batches


def load_reward_model(path: str, tokenizer, dtype: str = "float32"):
    """The backbone with a fresh scalar head, for training: dropout off."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch_dtype(dtype))
    model.config.pad_token_id = pad_id(tokenizer)
    return disable_dropout(model)


def encode_sides(tokenizer, prompt, completions, max_length: int, max_prompt_length: int | None = None,
                 system_prompt: str | None = None) -> list[list[int]]:
    """The token ids of prompt + each completion, on the same prompt tokens: every side whole when
    all fit `max_length` and no `max_prompt_length` is set (TRL's RewardTrainer reads pairs whole);
    else the prompt window (its last `max_prompt_length` tokens, default max_length // 2) on every side."""
    if max_prompt_length is None:
        whole = [encode_text(tokenizer, prompt, c, 1 << 30, 1 << 30, system_prompt) for c in completions]
        if max(len(w) for w in whole) <= max_length:
            return whole
    return [encode_text(tokenizer, prompt, c, max_length, max_prompt_length, system_prompt) for c in completions]


class PairBatches:
    """Tokenised pairs -> batches of [chosen…, rejected…] right-padded, with labels and margins."""

    def __init__(self, tokenizer, pairs: Sequence[Pair], max_length: int, max_prompt_length: int | None = None,
                 system_prompt: str | None = None):
        self.pad = pad_id(tokenizer)
        self.items = [(*encode_sides(tokenizer, q.prompt, (q.chosen, q.rejected), max_length, max_prompt_length,
                                     system_prompt), q.p, q.margin) for q in pairs]

    def __call__(self, idx: list[int]) -> dict:
        items = [self.items[i] for i in idx]
        ids, mask = padded([c for c, _, _, _ in items] + [r for _, r, _, _ in items], self.pad)
        return {"input_ids": ids, "attention_mask": mask,
                "p": torch.tensor([x[2] for x in items]), "margin": torch.tensor([x[3] for x in items])}


@dataclass
class Ranking:
    """K ≥ 2 replies to one prompt, best first. `conversational` says whether to use the chat template."""

    prompt: Messages | str
    ranked: list  # completions (assistant messages or strings), best first
    conversational: bool = True


def parse_ranking(rec: dict, where: str) -> Ranking:
    """`{"prompt": text or messages, "ranked": [reply, …]}`, best first; a reply is a string or a
    list of assistant messages."""
    ranked, prompt = rec.get("ranked"), rec.get("prompt")
    if prompt is None:
        raise UserError(f"{where}: missing field 'prompt'; expected a ranking record with prompt and ranked "
                        "(its replies, best first)")
    if not isinstance(ranked, list) or len(ranked) < 2:
        raise UserError(f"{where}: field 'ranked': expected a list of 2 or more replies, best first, got "
                        f"{type(ranked).__name__ if not isinstance(ranked, list) else f'{len(ranked)} replies'}")
    if isinstance(prompt, str) and all(isinstance(x, str) for x in ranked):
        return Ranking(prompt, list(ranked), False)
    return Ranking(field_messages(prompt, "user", where, "prompt"),
                   [field_messages(x, "assistant", where, f"ranked[{i}]") for i, x in enumerate(ranked)], True)


def read_rankings(path: str | Path) -> tuple[list[Ranking], Skipped]:
    return read_usable(path, parse_ranking, "rankings")


def holds_rankings(path: str | Path) -> bool:
    """Whether a training file is rankings (its first record has `ranked`) rather than pairs."""
    from rlaif.records import read_jsonl

    rows = read_jsonl(path, allow_empty=True)
    return bool(rows) and isinstance(rows[0], dict) and "ranked" in rows[0]


class RankingBatches:
    """Tokenised rankings -> every reply of the batch's rankings in one right-padded batch, ranking
    by ranking and best first, with `sizes` (K of each ranking)."""

    def __init__(self, tokenizer, rankings: Sequence[Ranking], max_length: int, max_prompt_length: int | None = None,
                 system_prompt: str | None = None):
        self.pad = pad_id(tokenizer)
        self.items = [encode_sides(tokenizer, q.prompt, q.ranked, max_length, max_prompt_length, system_prompt)
                      for q in rankings]

    def __call__(self, idx: list[int]) -> dict:
        ids, attention_mask = padded([s for i in idx for s in self.items[i]], self.pad)
        return {"input_ids": ids, "attention_mask": attention_mask,
                "sizes": torch.tensor([len(self.items[i]) for i in idx])}


def plackett_luce_loss(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per ranking −log P(τ | r) (the module docstring): `rewards` [B, K] in ranked order (best
    first), `valid` [B, K] marks the replies a shorter ranking has."""
    r = rewards.masked_fill(~valid, float("-inf"))
    rest = torch.logcumsumexp(r.flip(-1), -1).flip(-1)  # log Σ_{j≥k} exp(r_τj)
    terms = torch.where(valid, rewards - rest, torch.zeros_like(rewards))
    return -terms.sum(-1)  # the last reply's term is r − r = 0


def ranked_rewards(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (rewards [B, K_max] in ranked order, valid mask [B, K_max])."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    flat = out.logits[:, 0].float()
    sizes = batch["sizes"].tolist()
    valid = torch.arange(max(sizes), device=flat.device)[None] < batch["sizes"].to(flat.device)[:, None]
    rewards = torch.zeros(valid.shape, dtype=flat.dtype, device=flat.device).masked_scatter(valid, flat)
    return rewards, valid


def ranking_stats(rewards: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per ranking: (the share of its pairs ordered as ranked, ties half; the mean neighbour gap)."""
    k = valid.sum(-1)
    i, j = torch.triu_indices(valid.shape[1], valid.shape[1], 1, device=rewards.device)
    d = torch.sign(rewards[:, i] - rewards[:, j])
    both = (valid[:, i] & valid[:, j]).to(rewards.dtype)
    right = torch.where(d == 0, torch.full_like(d, 0.5), (d > 0).to(d.dtype))
    accuracy = (right * both).sum(-1) / both.sum(-1)
    last = rewards.gather(1, (k - 1)[:, None]).squeeze(1)
    return accuracy, (rewards[:, 0] - last) / (k - 1).to(rewards.dtype)


def ranking_loss(model, batch: dict, cfg: RewardConfig):
    """-> (loss, per-ranking losses, accuracies, margins)."""
    rewards, valid = ranked_rewards(model, batch)
    losses = plackett_luce_loss(rewards, valid)
    loss = losses.mean()
    if cfg.center_rewards_coefficient:
        loss = loss + cfg.center_rewards_coefficient * ((rewards * valid).sum(-1) ** 2).mean()
    accuracy, margin = ranking_stats(rewards.detach(), valid)
    return loss, losses.detach(), accuracy, margin


def pair_rewards(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    r = out.logits[:, 0].float()
    n = r.shape[0] // 2
    return r[:n], r[n:]


def batch_loss(model, batch: dict, cfg: RewardConfig):
    r_c, r_r = pair_rewards(model, batch)
    p = batch["p"].to(r_c.dtype)
    per_pair = soft_bt_loss(r_c, r_r, p, pair_margin(batch, p, cfg))
    loss = per_pair.mean()
    if cfg.center_rewards_coefficient:
        loss = loss + cfg.center_rewards_coefficient * ((r_c + r_r) ** 2).mean()
    return loss, r_c, r_r, p


def train_step_loss(model, batch: dict, cfg: RewardConfig):
    """-> (loss, mean accuracy, mean margin) of a batch of pairs or of rankings."""
    if "sizes" in batch:
        loss, _, accuracy, margin = ranking_loss(model, batch, cfg)
        return loss, accuracy.mean(), margin.mean()
    loss, r_c, r_r, p = batch_loss(model, batch, cfg)
    return loss, pair_accuracy(r_c, r_r, p).mean().detach(), (r_c - r_r).mean().detach()


@torch.no_grad()
def evaluate(accelerator, model, loader, cfg: RewardConfig) -> dict:
    """Accuracy and mean loss over a whole file (duplicates from uneven sharding dropped)."""
    model.eval()
    accs, losses, margins = [], [], []
    for batch in loader:
        if "sizes" in batch:  # rankings
            _, loss, accuracy, margin = ranking_loss(model, batch, cfg)
            a, l, m = accelerator.gather_for_metrics((accuracy, loss, margin))
            accs.append(a), losses.append(l), margins.append(m)
            continue
        r_c, r_r = pair_rewards(model, batch)
        p = batch["p"].to(r_c.dtype)
        loss = soft_bt_loss(r_c, r_r, p, pair_margin(batch, p, cfg))
        a, l, m = accelerator.gather_for_metrics((pair_accuracy(r_c, r_r, p), loss, r_c - r_r))
        accs.append(a), losses.append(l), margins.append(m)
    model.train()
    acc, loss, margin = torch.cat(accs), torch.cat(losses), torch.cat(margins)
    return {"accuracy": acc.mean().item(), "loss": loss.mean().item(), "margin": margin.mean().item(),
            "n": int(acc.numel())}


def read_eval_pairs(path: str) -> list[Pair]:
    """Preference JSONL; upstream HH-RLHF files (`chosen`/`rejected` transcripts, no `prompt`) go
    through the HH reader so the shared prefix becomes the chat prompt."""
    return read_eval_file(path)[0]


def read_eval_file(path: str) -> tuple[list[Pair], Skipped]:
    """`read_eval_pairs` with the count of skipped records by reason."""
    from rlaif.records import read_jsonl

    first = read_jsonl(path)[0]
    if "prompt" not in first and isinstance(first.get("chosen"), str) and "\n\nHuman:" in first["chosen"]:
        from rlaif.hh_rlhf import read_hh_rlhf

        human = read_hh_rlhf(path)
        pairs = [parse_pair(p, f"{path}:{p.get('line', i)}") for i, p in enumerate(human.pairs, 1)]
        skipped = Skipped(path, human.total)
        skipped.update(human.skipped)
        left_out = set(range(1, human.total + 1)) - {p.get("line") for p in human.pairs}
        skipped.first = min(left_out, default=None)
        return pairs, skipped
    return read_pairs(path)


def training_examples(tokenizer, path: str, cfg: RewardConfig, eval_file: bool = False):
    """A file of pairs or of rankings -> (examples, their collate function, skipped records by reason)."""
    if holds_rankings(path):
        for field in ("margin", "margin_from_strength"):
            if getattr(cfg, field):
                raise UserError(f"{path} holds rankings: {field} is a margin between the two replies of a pair; "
                                f"set {field} to 0 for rankings (the Plackett–Luce loss has none)")
        rankings, skipped = read_rankings(path)
        return rankings, RankingBatches(tokenizer, rankings, cfg.max_length, cfg.max_prompt_length,
                                        cfg.system_prompt), skipped
    pairs, skipped = read_eval_file(path) if eval_file else read_pairs(path)
    return pairs, PairBatches(tokenizer, pairs, cfg.max_length, cfg.max_prompt_length, cfg.system_prompt), skipped


# ---------------------------------------------------------------- training


def train_reward_model(cfg: RewardConfig) -> dict:
    """Train, evaluate, save. Returns the summary written to `summary.json`."""
    if not cfg.prefs:
        raise UserError("train-rm: no training preferences; set `prefs` (--prefs FILE)")
    run = Run.start(cfg, "train-rm", cfg.base)
    pairs, collate, skipped = training_examples(run.tokenizer, cfg.prefs, cfg)  # pairs, or rankings of K replies
    run.left_out(skipped, "skipped_pairs")
    model = start_training(load_reward_model(run.path, run.tokenizer, cfg.dtype), cfg)

    steps, order = example_stream(cfg, len(pairs))
    model, optimizer, loader, scheduler = run.prepare(model, order, collate, steps)
    evals = {}
    for name, path in (("eval", cfg.eval_file), ("human", cfg.human_eval_file)):
        if path:
            examples, eval_collate, eval_skipped = training_examples(run.tokenizer, path, cfg, eval_file=True)
            run.left_out(eval_skipped, f"{name}_skipped_pairs", name)
            evals[name] = partial(evaluate, run.accelerator, model, run.eval_loader(len(examples), eval_collate), cfg)

    def loss(batch, _):
        loss, accuracy, margin = train_step_loss(model, batch, cfg)
        return loss, {"loss": loss.detach(), "accuracy": accuracy, "margin": margin}

    step = run.optimise(model, optimizer, scheduler, loader, steps, loss, evals)
    kind = "train_rankings" if isinstance(collate, RankingBatches) else "train_pairs"
    return run.finish(model, step, {kind: len(pairs)}, CURVES, PLOTTED)


# ---------------------------------------------------------------- scoring with a saved RM


def trained_config(path: str | Path) -> dict:
    """The config a reward model folder was trained with, from the manifest `rlaif train-rm` writes
    beside it; {} for a folder trained elsewhere."""
    import json

    try:
        cfg = json.loads((Path(path) / "manifest.json").read_text())["stages"]["train-rm"]["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def trained_lengths(path: str | Path) -> tuple[int | None, int | None]:
    """(max_length, max_prompt_length) a reward model folder was trained with ((None, None): unknown)."""
    cfg = trained_config(path)
    return cfg.get("max_length"), cfg.get("max_prompt_length")


class RewardScorer:
    """A saved reward model as a reward function: `scorer(prompts, responses) -> list[float]`,
    prompts as chat messages (or strings), responses as assistant texts. Same tokenisation as
    training (chat template, same truncation): `max_length` and `max_prompt_length` default to the
    training run's (read from the folder's manifest), else 512 and max_length // 2; so does the
    system prompt the prompts were built with."""

    def __init__(self, path: str, device: str | torch.device = "cpu", batch_size: int = 16,
                 max_length: int | None = None, dtype: str = "float32", max_prompt_length: int | None = None,
                 progress: bool = False):
        from transformers import AutoModelForSequenceClassification

        trained_max, trained_prompt = trained_lengths(path)
        max_length = max_length or trained_max or 512
        max_prompt_length = max_prompt_length or (trained_prompt if max_length == trained_max else None)
        self.progress = progress
        self.tokenizer = load_tokenizer(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch_dtype(dtype))
        self.model.config.pad_token_id = pad_id(self.tokenizer)
        self.model.to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.system_prompt = trained_config(path).get("system_prompt")

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Messages | str], responses: Sequence[str]) -> list[float]:
        seqs = []
        for prompt, text in zip(prompts, responses):
            completion = text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]
            seqs += encode_sides(self.tokenizer, prompt, [completion], self.max_length, self.max_prompt_length,
                                 self.system_prompt)
        scores: list[float] = []
        for i in tqdm(range(0, len(seqs), self.batch_size), desc="reward model", unit="batch",
                      disable=not self.progress or len(seqs) <= self.batch_size):
            ids, mask = padded(seqs[i:i + self.batch_size], pad_id(self.tokenizer))
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                use_cache=False).logits
            scores += logits[:, 0].float().tolist()
        return scores


# `python -m rlaif.train.reward_model CONFIG.yaml [--set key=value ...]`, also under `accelerate launch -m`.
main = partial(run_main, RewardConfig, train_reward_model, "train-rm")


if __name__ == "__main__":
    sys.exit(main())
