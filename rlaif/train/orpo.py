"""ORPO: supervised fine-tuning and a preference term in one loss, with no reference model.

ORPO (Hong et al. 2024) reads the policy's length-normalised likelihood of a reply,
P(y|x) = exp(ā(y)) with ā(y) = log π(y|x)/|y|, as odds odds(y) = P / (1 − P), and pushes the log
odds ratio of chosen over rejected up while imitating the chosen reply (eqs. 6-7):

    log OR = log odds(y_c) − log odds(y_r) = (ā_c − ā_r) − (log(1 − e^ā_c) − log(1 − e^ā_r))
    L      = L_SFT − λ·log σ(log OR)

With a soft label p (the probability that `chosen` is the better reply) the loss is its expectation
over the two readings of the pair, as our DPO's is. log OR is antisymmetric (swapping the replies
negates it), so the odds-ratio term becomes a cross-entropy against p, and the SFT term imitates
each reply as much as it is likely to be the better one:

    L = NLL_p − λ·[p·log σ(log OR) + (1 − p)·log σ(−log OR)]
    NLL_p = Σ_i [p_i·(−log π(y_c,i)) + (1 − p_i)·(−log π(y_r,i))] / Σ_i [p_i·|y_c,i| + (1 − p_i)·|y_r,i|]

The soft target of the odds-ratio term: σ(log OR) = p, i.e. odds(y_c)/odds(y_r) = p/(1 − p); a tie
(p = 0.5) asks for equal odds and imitates both replies alike. At p = 1 this is ORPO as TRL 1.16's
`trl.experimental.orpo.ORPOTrainer` computes it (λ is its `beta`, NLL_p its chosen-only token-mean
cross-entropy). TRL and the ORPO authors' code take the SFT term over the prompt's tokens as well
as the reply's; here `sft_on: completion` (the default) takes it on the reply only, as `rlaif sft`
does, and `sft_on: all` gives TRL's.

Chosen and rejected go through one concatenated forward, on the same prompt tokens (a long prompt
keeps its last `max_prompt_length` tokens on both sides); dropout is off, as TRL does. No reference
model and no reference pass: the memory of one model and its optimiser state, like SimPO and CPO
(`rlaif dpo --loss simpo|cpo`). LoRA (`peft`) trains adapters only; the saved model has them merged.

Run: `rlaif orpo --prefs FILE --policy SPEC --out DIR`, or `accelerate launch -m rlaif.train.orpo CONFIG.yaml`.
"""

from __future__ import annotations

import sys
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from rlaif.config import DEFAULT_MODEL
from rlaif.errors import UserError
from rlaif.train.config import PairTrainConfig
from rlaif.train.maths import pair_accuracy
from rlaif.train.models import LoraSettings, load_policy, start_training
from rlaif.train.pair_logps import completion_pairs, log1mexp, pair_logps, soft_nll
from rlaif.train.run_log import gather_mean
from rlaif.train.trainer import Run, example_stream, run_main


class ORPOConfig(PairTrainConfig):
    policy: str = Field(DEFAULT_MODEL, description="starting policy: embedded:NAME, local dir, hub id")
    prefs: str | None = Field(None, description="preference JSONL")
    beta: float = Field(0.1, gt=0, description="λ, the weight of the odds-ratio term (TRL's `beta`)")
    sft_on: Literal["completion", "all"] = Field(
        "completion", description="the SFT term's tokens: the reply, or prompt and reply (TRL)")
    soft_labels: bool = Field(True, description="targets from p_chosen; False: every pair counts as p = 1")
    learning_rate: float = Field(5e-6, gt=0, description="peak learning rate of AdamW, reached after warmup_steps")
    lora: LoraSettings | None = Field(
        None, description="LoRA adapters (r, alpha, dropout, target modules); unset: every weight is trained")


# the logged curves whose first and last values the summary gives, and those train_curves.png draws
CURVES = ("loss", "nll", "or_loss", "log_odds_ratio", "margin", "accuracy", "eval_loss", "eval_margin",
          "eval_accuracy")
PLOTTED = ("loss", "nll", "log_odds_ratio", "accuracy")


# ---------------------------------------------------------------- the loss


def orpo_loss(mean_chosen: torch.Tensor, mean_rejected: torch.Tensor, p: torch.Tensor | float = 1.0):
    """The odds-ratio term per pair, −[p·log σ(log OR) + (1 − p)·log σ(−log OR)], and log OR, from
    the per-token mean log-likelihoods ā_c, ā_r (the module docstring)."""
    a_c, a_r = mean_chosen.float(), mean_rejected.float()
    log_or = (a_c - a_r) - (log1mexp(a_c) - log1mexp(a_r))
    return -(p * F.logsigmoid(log_or) + (1 - p) * F.logsigmoid(-log_or)), log_or


def batch_loss(model, batch: dict, cfg: ORPOConfig):
    """-> (L = NLL_p + λ·mean odds-ratio term, metrics of the batch; accuracy as the reward model's,
    ties count 0.5)."""
    lp = pair_logps(model, batch)
    a_c, a_r = lp.chosen_rejected(average=True)
    p = batch["p"].to(a_c.device)
    or_losses, log_or = orpo_loss(a_c, a_r, p)
    nll = soft_nll(lp, p, cfg.sft_on)
    loss = nll + cfg.beta * or_losses.mean()
    cr, rr = cfg.beta * a_c.detach(), cfg.beta * a_r.detach()  # TRL's logged rewards: λ·ā
    return loss, {"loss": loss.detach(), "nll": nll.detach(), "or_loss": or_losses.mean().detach(),
                  "log_odds_ratio": log_or.mean().detach(), "rewards_chosen": cr.mean(),
                  "rewards_rejected": rr.mean(), "margin": (cr - rr).mean(),
                  "accuracy": pair_accuracy(cr, rr, p).mean()}


@torch.no_grad()
def evaluate(accelerator, model, loader, cfg: ORPOConfig) -> dict:
    """Means over a whole file (per batch, weighted by its pairs; duplicates from uneven sharding dropped)."""
    model.eval()
    rows, sizes = [], []
    for batch in loader:
        _, m = batch_loss(model, batch, cfg)
        n = accelerator.gather_for_metrics(batch["p"]).numel()
        rows.append({k: gather_mean(accelerator, v) for k, v in m.items()})
        sizes.append(n)
    model.train()
    return {k: sum(r[k] * n for r, n in zip(rows, sizes)) / sum(sizes) for k in rows[0]}


# ---------------------------------------------------------------- training


def train_orpo(cfg: ORPOConfig) -> dict:
    if not cfg.prefs:
        raise UserError("orpo: no preferences; set `prefs` (--prefs FILE)")
    run = Run.start(cfg, "orpo", cfg.policy)
    pairs, collate = completion_pairs(run, cfg.prefs)
    steps, order = example_stream(cfg, len(pairs))
    model = start_training(load_policy(run.path, cfg.dtype, cfg.lora), cfg)
    model, optimizer, loader, scheduler = run.prepare(model, order, collate, steps)
    evals = {}
    if cfg.eval_file:
        eval_pairs, eval_collate = completion_pairs(run, cfg.eval_file, "eval")
        evals["eval"] = partial(evaluate, run.accelerator, model, run.eval_loader(len(eval_pairs), eval_collate), cfg)

    step = run.optimise(model, optimizer, scheduler, loader, steps, lambda batch, _: batch_loss(model, batch, cfg),
                        evals)
    return run.finish(model, step, {"train_pairs": len(pairs), "sft_on": cfg.sft_on}, CURVES, PLOTTED,
                      lora=bool(cfg.lora))


# `python -m rlaif.train.orpo CONFIG.yaml [--set key=value ...]`, also under `accelerate launch -m`.
main = partial(run_main, ORPOConfig, train_orpo, "orpo")


if __name__ == "__main__":
    sys.exit(main())
