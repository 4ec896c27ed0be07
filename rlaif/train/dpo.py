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

Run: `rlaif dpo --prefs FILE --policy SPEC --out DIR`, or `accelerate launch -m rlaif.train.dpo CONFIG.yaml`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from tqdm.auto import tqdm

from rlaif.config import Strict
from rlaif.errors import UserError
from rlaif.train.common import (Pair, PairTrainConfig, TrainLog, disable_dropout, encode, example_stream,
                                finish_run, gather_mean, load_tokenizer, make_accelerator, make_optimizer,
                                pad, pad_id, read_pairs, resolve, seed_everything, sequence_logps, summary,
                                reference_model, start_training, torch_dtype)
from rlaif.train.distributed import save_model

DEFAULT_POLICY = "embedded:smollm2-135m-instruct"


class LoraSettings(Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class DPOConfig(PairTrainConfig):
    policy: str = DEFAULT_POLICY  # starting policy and reference: embedded:NAME, local dir, hub id
    reference: str | None = None  # another reference model (same tokenizer); None: the starting policy
    prefs: str | None = None  # preference JSONL
    loss: Literal["sigmoid", "ipo"] = "sigmoid"
    beta: float = Field(0.1, gt=0)
    soft_labels: bool = True  # targets from p_chosen; False: every pair counts as p = 1
    learning_rate: float = Field(5e-6, gt=0)
    lora: LoraSettings | None = None


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
        raise UserError(f"loss {loss!r}: expected 'sigmoid' or 'ipo'")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


# ---------------------------------------------------------------- batches and forward


class DPOBatches:
    """Tokenised pairs -> [chosen…, rejected…] right-padded with completion masks, labels, indices."""

    def __init__(self, tokenizer, pairs: Sequence[Pair], max_length: int, soft_labels: bool = True,
                 max_prompt_length: int | None = None, system_prompt: str | None = None):
        self.pad = pad_id(tokenizer)
        self.items = []
        for q in pairs:
            c_ids, c_mask = encode(tokenizer, q.prompt, q.chosen, max_length, max_prompt_length, system_prompt)
            r_ids, r_mask = encode(tokenizer, q.prompt, q.rejected, max_length, max_prompt_length, system_prompt)
            self.items.append((c_ids, c_mask, r_ids, r_mask, q.p if soft_labels else 1.0))

    def __call__(self, idx: list[int]) -> dict:
        items = [self.items[i] for i in idx]
        seqs = [x[0] for x in items] + [x[2] for x in items]
        masks = [x[1] for x in items] + [x[3] for x in items]
        ids = pad(seqs, self.pad)
        lengths = torch.tensor([len(s) for s in seqs])
        return {"input_ids": ids,
                "attention_mask": (torch.arange(ids.shape[1])[None] < lengths[:, None]).long(),
                "completion_mask": pad(masks, 0),
                "p": torch.tensor([x[4] for x in items], dtype=torch.float32),
                "idx": torch.tensor(idx, dtype=torch.long)}


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
    from rlaif.train.reward_model import pair_accuracy  # same definition as the RM's: ties count 0.5

    return {"loss": losses.mean(), "rewards_chosen": chosen_rewards.mean(),
            "rewards_rejected": rejected_rewards.mean(),
            "margin": (chosen_rewards - rejected_rewards).mean(),
            "accuracy": pair_accuracy(chosen_rewards, rejected_rewards, p).mean()}


@torch.no_grad()
def evaluate(accelerator, model, loader, ref: torch.Tensor, cfg: DPOConfig) -> dict:
    model.eval()
    rows = []
    for batch in loader:
        c, r = concatenated_logps(model, batch, cfg.loss == "ipo")
        ref_b = ref[batch["idx"].cpu()].to(c.device)
        losses, cr, rr = dpo_loss(c, r, ref_b[:, 0], ref_b[:, 1], cfg.beta, cfg.loss, batch["p"])
        rows.append(accelerator.gather_for_metrics((losses.detach(), cr, rr, batch["p"])))
    model.train()
    losses, cr, rr, p = (torch.cat(x) for x in zip(*rows))
    return {k: v.item() for k, v in batch_metrics(losses, cr, rr, p).items()}


# ---------------------------------------------------------------- training


def apply_lora(model, lora: LoraSettings):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UserError("LoRA needs peft: pip install 'rlaif-kit[lora]'") from None
    return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            target_modules=lora.target_modules, task_type="CAUSAL_LM"))


def load_policy(path: str, dtype: str):
    """The starting policy, dropout off (the reference log-probs come from these weights)."""
    from transformers import AutoModelForCausalLM

    return disable_dropout(AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype)))


def train_dpo(cfg: DPOConfig) -> dict:
    if not cfg.prefs:
        raise UserError("dpo: no preferences; set `prefs` (--prefs FILE)")
    accelerator = make_accelerator(cfg)
    seed_everything(cfg.seed)
    out = Path(cfg.output_dir)
    path = resolve(cfg.policy)
    tokenizer = load_tokenizer(path)
    pairs, skipped = read_pairs(cfg.prefs)
    skipped.announce("dpo", accelerator.is_main_process)
    model = load_policy(path, cfg.dtype)
    if cfg.lora:
        model = apply_lora(model, cfg.lora)
    start_training(model, cfg)
    average = cfg.loss == "ipo"

    steps, order = example_stream(cfg, len(pairs))
    collate = DPOBatches(tokenizer, pairs, cfg.max_length, cfg.soft_labels, cfg.max_prompt_length, cfg.system_prompt)
    loader = torch.utils.data.DataLoader(order, batch_size=cfg.batch_size, collate_fn=collate)
    optimizer, scheduler = make_optimizer(model, cfg, steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    eval_state = None
    with reference_model(accelerator, model, tokenizer, cfg.reference, cfg.policy, cfg.dtype) as ref_model:
        ref = reference_logps(accelerator, ref_model, collate, len(pairs), cfg.eval_batch_size, average)
        if cfg.eval_file:
            eval_pairs, eval_skipped = read_pairs(cfg.eval_file)
            eval_skipped.announce("dpo (eval)", accelerator.is_main_process)
            eval_collate = DPOBatches(tokenizer, eval_pairs, cfg.max_length, cfg.soft_labels, cfg.max_prompt_length,
                                      cfg.system_prompt)
            eval_ref = reference_logps(accelerator, ref_model, eval_collate, len(eval_pairs), cfg.eval_batch_size,
                                       average)
            eval_loader = accelerator.prepare_data_loader(torch.utils.data.DataLoader(
                list(range(len(eval_pairs))), batch_size=cfg.eval_batch_size, collate_fn=eval_collate))
            eval_state = (eval_loader, eval_ref)

    log = TrainLog(out / "train_log.jsonl", enabled=accelerator.is_main_process)
    bar = tqdm(total=steps, desc=f"dpo ({cfg.loss})", disable=not (cfg.progress and accelerator.is_main_process),
               file=sys.stderr, dynamic_ncols=True)
    started = time.time()
    step, micro = 0, []
    for batch in loader:
        with accelerator.accumulate(model):
            c, r = concatenated_logps(model, batch, average)
            ref_b = ref[batch["idx"].cpu()].to(c.device)
            losses, cr, rr = dpo_loss(c, r, ref_b[:, 0], ref_b[:, 1], cfg.beta, cfg.loss, batch["p"].to(c.device))
            loss = losses.mean()
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        micro.append(batch_metrics(losses.detach(), cr, rr, batch["p"].to(c.device)))
        if not accelerator.sync_gradients:
            continue
        step += 1
        bar.update(1)
        row = None
        if step % cfg.log_every == 0 or step == steps:
            row = {"step": step, **{k: gather_mean(accelerator, torch.stack([m[k] for m in micro]).mean())
                                    for k in micro[0]}, "lr": scheduler.get_last_lr()[0]}
        micro = []
        if eval_state and (step % cfg.eval_every == 0 or step == steps):
            row = row or {"step": step}
            row.update({f"eval_{k}": v for k, v in evaluate(accelerator, model, *eval_state, cfg).items()})
        if row is not None:
            log.log(row)
            bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}")
    bar.close()
    seconds = time.time() - started
    log.close()

    result = summary(log, step, seconds, ["loss", "margin", "accuracy", "rewards_chosen",
                                          "rewards_rejected", "eval_loss", "eval_margin", "eval_accuracy"])
    result.update({"train_pairs": len(pairs), "skipped_pairs": dict(skipped),
                   "processes": accelerator.num_processes,
                   "mixed_precision": accelerator.mixed_precision, "loss_type": cfg.loss})
    if eval_state:
        result["eval_skipped_pairs"] = dict(eval_skipped)
    accelerator.wait_for_everyone()
    if cfg.save:  # every rank: the full state dict is gathered collectively under FSDP / ZeRO-3
        save_model(accelerator, model, out, tokenizer, lora=bool(cfg.lora))
    if accelerator.is_main_process:
        finish_run(out, "dpo", cfg, result, log, ["loss", "margin", "accuracy", "eval_margin"])
    accelerator.wait_for_everyone()
    return result


def main(argv: list[str] | None = None) -> int:
    """`python -m rlaif.train.dpo CONFIG.yaml [--set key=value ...]` (works under `accelerate launch -m`)."""
    from rlaif.train.common import run_main

    return run_main(DPOConfig, train_dpo, argv, "dpo")


if __name__ == "__main__":
    sys.exit(main())
