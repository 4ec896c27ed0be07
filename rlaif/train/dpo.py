"""DPO and IPO with soft-label targets.

With the policy's and the frozen reference's log-probabilities of each completion (prompt tokens
masked), the implicit reward gap is

    h = (log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))

and, with `p = p_chosen` the labeler's probability that `y_c` is better:

- `sigmoid` (DPO, Rafailov et al. 2023):  L = −p·log σ(β h) − (1 − p)·log σ(−β h).
  At p = 1 this is DPO; at p < 1 it is conservative DPO / TRL's `label_smoothing = 1 − p`.
- `ipo` (Azar et al. 2023):  L = (h − (2p − 1) / (2β))².
  IPO's population loss regresses h(y, y') on I(y ≻ y')/τ over both orders of each pair; with
  I ~ Bernoulli(p) the expectation is  E[(h − I/τ)² + (−h − (1 − I)/τ)²]  = 2·(h − (2p − 1)/(2τ))² + const,
  so the per-pair target is (2p − 1)/(2β) (τ = β). At p = 1 it is TRL's `(h − 1/(2β))²`; at p = 0.5
  the target is h = 0. As in TRL (and the IPO paper) the log-probabilities for IPO are averaged over
  completion tokens, not summed.

The reference log-probs are computed once, before the first update, with the starting weights
(the policy *is* the reference then): no second model in memory. Dropout is off in the model (as
TRL does), so before the first update the policy's log-probs equal the reference's and h = 0.
Chosen and rejected go through one concatenated forward, on the same prompt tokens (a long prompt
keeps its last `max_prompt_length` tokens on both sides). Implicit-prompt records whose transcripts
differ before the last assistant turn are skipped and counted (`skipped_pairs` in the summary).
LoRA (`peft`, the `lora` extra) trains adapters only (its own `dropout` setting applies to them);
the saved model has them merged, so the output is a plain causal-LM dir.

Reference-free losses (no reference model and no reference pass: the policy alone). With the
policy's completion log-likelihoods log π(y) and their per-token means ā(y) = log π(y)/|y|, and the
soft label read the same way as above (with probability p the chosen reply is the better one, so
each loss is its expectation over the two readings of the pair):

- `simpo` (SimPO, Meng et al. 2024, eq. 6), length-normalised, with a target margin γ:
      ℓ(a ≻ b) = −log σ(β(ā(a) − ā(b)) − γ)
      L = p·ℓ(y_c ≻ y_r) + (1 − p)·ℓ(y_r ≻ y_c)
  At p = 1 it is SimPO (TRL: CPO trainer, loss_type "simpo", cpo_alpha 0). The soft target: the
  minimiser x* = β(ā_c − ā_r) solves p·σ(γ − x) = (1 − p)·σ(γ + x), so a tie (p = 0.5) asks for no
  gap at all and x* grows with p (to ∞ at p = 1). TRL's `label_smoothing` = 1 − p differs here: it
  keeps the margin on one side only (target x = γ + logit p), so it asks even a tie for a gap γ.
- `cpo` (CPO, Xu et al. 2024, eq. 3 with its NLL term), on summed log-likelihoods:
      L = −p·log σ(βh) − (1 − p)·log σ(−βh) + α·NLL_p,   h = log π(y_c) − log π(y_r)
  The preference term is the sigmoid loss above with π_ref dropped (equal to TRL's
  `label_smoothing = 1 − p`; target βh = logit p, h = 0 for a tie). NLL_p is the token-mean SFT term
  on the replies, each side weighted by its probability of being the better one
  (rlaif/train/pair_logps.py; chosen only at p = 1, as TRL's `cpo_alpha`).
ORPO, the other reference-free loss, is a trainer of its own (rlaif/train/orpo.py, `rlaif orpo`).

Run: `rlaif dpo --prefs FILE --policy SPEC --out DIR`, or `accelerate launch -m rlaif.train.dpo CONFIG.yaml`.
"""

from __future__ import annotations

import sys
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from rlaif.errors import UserError
from rlaif.train.config import ReferencedConfig
from rlaif.train.maths import pair_accuracy, sequence_logps
from rlaif.train.models import LoraSettings, load_policy, reference_model, start_training
from rlaif.train.pair_logps import CompletionPairs, completion_pairs, pair_logps, soft_nll
from rlaif.train.trainer import Run, example_stream, run_main

REFERENCE_FREE = ("simpo", "cpo")


class DPOConfig(ReferencedConfig):
    prefs: str | None = Field(None, description="preference JSONL")
    loss: Literal["sigmoid", "ipo", "simpo", "cpo"] = Field(
        "sigmoid", description="sigmoid (DPO), ipo, or the reference-free simpo and cpo")
    beta: float = Field(
        0.1, gt=0, description="β: the KL constraint's strength (sigmoid, ipo), the reward scale (simpo, cpo); "
                               "SimPO's paper uses 2-2.5 with γ = β/2")
    simpo_gamma: float = Field(0.5, ge=0, description="γ, SimPO's target margin (loss simpo)")
    cpo_alpha: float = Field(1.0, ge=0, description="α, the weight of CPO's NLL term (loss cpo)")
    soft_labels: bool = Field(True, description="targets from p_chosen; False: every pair counts as p = 1")
    learning_rate: float = Field(5e-6, gt=0, description="peak learning rate of AdamW, reached after warmup_steps")
    lora: LoraSettings | None = Field(
        None, description="LoRA adapters (r, alpha, dropout, target modules); unset: every weight is trained")

    @model_validator(mode="after")
    def _reference_free_has_no_reference(self):
        if self.loss in REFERENCE_FREE and self.reference is not None:
            raise ValueError(f"reference: loss {self.loss!r} is reference-free; leave `reference` unset "
                             "(--reference) or use loss sigmoid / ipo")
        return self


# the logged curves whose first and last values the summary gives, and those train_curves.png draws
CURVES = ("loss", "margin", "accuracy", "rewards_chosen", "rewards_rejected", "eval_loss", "eval_margin",
          "eval_accuracy")
PLOTTED = ("loss", "margin", "accuracy", "eval_margin")


# ---------------------------------------------------------------- the loss


def dpo_loss(pi_chosen: torch.Tensor, pi_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, loss: str = "sigmoid",
             p: torch.Tensor | float = 1.0):
    """-> (per-pair losses, chosen rewards β·log π/π_ref, rejected rewards)."""
    chosen_ratio = pi_chosen - ref_chosen
    rejected_ratio = pi_rejected - ref_rejected
    h = chosen_ratio - rejected_ratio
    if loss == "sigmoid":
        losses = -(p * F.logsigmoid(beta * h) + (1 - p) * F.logsigmoid(-beta * h))
    elif loss == "ipo":
        losses = (h - (2 * p - 1) / (2 * beta)) ** 2
    else:
        raise UserError(f"loss {loss!r}: expected 'sigmoid' or 'ipo' (simpo and cpo: reference_free_loss)")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def reference_free_loss(pi_chosen: torch.Tensor, pi_rejected: torch.Tensor, beta: float, loss: str = "simpo",
                        p: torch.Tensor | float = 1.0, gamma: float = 0.0):
    """SimPO / CPO's preference term (the module docstring): `pi_*` are ā(y) for simpo, log π(y) for
    cpo; CPO's NLL term is added by the caller. -> (per-pair losses, chosen rewards β·pi_c, rejected)."""
    x = beta * (pi_chosen - pi_rejected)
    if loss == "simpo":
        losses = -(p * F.logsigmoid(x - gamma) + (1 - p) * F.logsigmoid(-x - gamma))
    elif loss == "cpo":
        losses = -(p * F.logsigmoid(x) + (1 - p) * F.logsigmoid(-x))
    else:
        raise UserError(f"loss {loss!r}: expected 'simpo' or 'cpo'")
    return losses, beta * pi_chosen.detach(), beta * pi_rejected.detach()


# ---------------------------------------------------------------- batches and forward


DPOBatches = CompletionPairs  # tokenised pairs -> [chosen…, rejected…] with completion masks (pair_logps.py)


def concatenated_logps(model, batch: dict, average: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over chosen and rejected; per-sequence completion log-probs (sum or mean)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    logps = sequence_logps(logits, batch["input_ids"], batch["completion_mask"], average=average)
    n = logps.shape[0] // 2
    return logps[:n], logps[n:]


@torch.no_grad()
def reference_logps(accelerator, model, collate: DPOBatches, n: int, batch_size: int,
                    average: bool) -> torch.Tensor:
    """[n, 2] reference log-probs (chosen, rejected), computed with the current weights, sharded
    over processes and gathered so every process holds the whole table."""
    loader = accelerator.prepare_data_loader(
        torch.utils.data.DataLoader(list(range(n)), batch_size=batch_size, collate_fn=collate))
    was_training = model.training
    model.eval()
    table = torch.zeros(n, 2)
    for batch in loader:
        c, r = concatenated_logps(model, batch, average)
        idx, c, r = accelerator.gather_for_metrics((batch["idx"], c.float(), r.float()))
        table[idx.cpu()] = torch.stack([c, r], -1).cpu()
    model.train(was_training)
    return table


def batch_metrics(losses, chosen_rewards, rejected_rewards, p) -> dict[str, torch.Tensor]:
    """Means over a batch; accuracy as the reward model's (ties count 0.5)."""
    return {"loss": losses.mean(), "rewards_chosen": chosen_rewards.mean(),
            "rewards_rejected": rejected_rewards.mean(),
            "margin": (chosen_rewards - rejected_rewards).mean(),
            "accuracy": pair_accuracy(chosen_rewards, rejected_rewards, p).mean()}


def batch_loss(model, batch: dict, ref: torch.Tensor | None, cfg: DPOConfig):
    """-> (the loss to minimise, per-pair preference losses, chosen rewards, rejected rewards, p)."""
    if cfg.loss not in REFERENCE_FREE:
        c, r = concatenated_logps(model, batch, cfg.loss == "ipo")
        ref_b = ref[batch["idx"].cpu()].to(c.device)
        p = batch["p"].to(c.device)
        losses, cr, rr = dpo_loss(c, r, ref_b[:, 0], ref_b[:, 1], cfg.beta, cfg.loss, p)
        return losses.mean(), losses, cr, rr, p
    lp = pair_logps(model, batch)
    c, r = lp.chosen_rejected(average=cfg.loss == "simpo")
    p = batch["p"].to(c.device)
    losses, cr, rr = reference_free_loss(c, r, cfg.beta, cfg.loss, p, cfg.simpo_gamma)
    loss = losses.mean()
    if cfg.loss == "cpo" and cfg.cpo_alpha:
        loss = loss + cfg.cpo_alpha * soft_nll(lp, p)
    return loss, losses, cr, rr, p


@torch.no_grad()
def evaluate(accelerator, model, loader, ref: torch.Tensor | None, cfg: DPOConfig) -> dict:
    model.eval()
    rows = []
    for batch in loader:
        _, losses, cr, rr, p = batch_loss(model, batch, ref, cfg)
        rows.append(accelerator.gather_for_metrics((losses.detach(), cr, rr, p)))
    model.train()
    losses, cr, rr, p = (torch.cat(x) for x in zip(*rows))
    return {k: v.item() for k, v in batch_metrics(losses, cr, rr, p).items()}


# ---------------------------------------------------------------- training


def train_dpo(cfg: DPOConfig) -> dict:
    if not cfg.prefs:
        raise UserError("dpo: no preferences; set `prefs` (--prefs FILE)")
    run = Run.start(cfg, "dpo", cfg.policy)
    pairs, collate = completion_pairs(run, cfg.prefs)
    model = start_training(load_policy(run.path, cfg.dtype, cfg.lora), cfg)
    average = cfg.loss == "ipo"

    steps, order = example_stream(cfg, len(pairs))
    model, optimizer, loader, scheduler = run.prepare(model, order, collate, steps)
    if cfg.eval_file:
        eval_pairs, eval_collate = completion_pairs(run, cfg.eval_file, "eval")
    ref, eval_ref = None, None
    if cfg.loss not in REFERENCE_FREE:  # the reference pass; SimPO and CPO have none
        with reference_model(run.accelerator, model, run.tokenizer, cfg.reference, cfg.policy, cfg.dtype) as ref_model:
            table = partial(reference_logps, run.accelerator, ref_model, batch_size=cfg.eval_batch_size,
                            average=average)
            ref = table(collate, len(pairs))
            if cfg.eval_file:
                eval_ref = table(eval_collate, len(eval_pairs))
    evals = {}
    if cfg.eval_file:
        evals["eval"] = partial(evaluate, run.accelerator, model, run.eval_loader(len(eval_pairs), eval_collate),
                                eval_ref, cfg)

    def loss(batch, _):
        loss, losses, cr, rr, p = batch_loss(model, batch, ref, cfg)
        return loss, {**batch_metrics(losses.detach(), cr, rr, p), "loss": loss.detach()}

    step = run.optimise(model, optimizer, scheduler, loader, steps, loss, evals, desc=f"dpo ({cfg.loss})")
    return run.finish(model, step, {"train_pairs": len(pairs), "loss_type": cfg.loss}, CURVES, PLOTTED,
                      lora=bool(cfg.lora))


# `python -m rlaif.train.dpo CONFIG.yaml [--set key=value ...]`, also under `accelerate launch -m`.
main = partial(run_main, DPOConfig, train_dpo, "dpo")


if __name__ == "__main__":
    sys.exit(main())
