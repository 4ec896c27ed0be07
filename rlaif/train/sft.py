"""SL-CAI: supervised fine-tuning on prompt → completion records, with the loss on the completion only.

Each record is a TRL prompt–completion example: conversational (`prompt` a list of chat messages,
`completion` assistant messages — what the critique–revision stage writes to `sl_cai.jsonl`) or plain
strings. With x the prompt tokens and y_1..y_T the completion tokens, the loss of one optimizer step is
the negative log-likelihood per completion token,

    L = − Σ_{examples of the step} Σ_t log π(y_t | x, y_<t)  /  Σ_{examples of the step} T

averaged over every completion token of the step (all micro-batches, all processes), as TRL's
SFTTrainer does with `completion_only_loss` (tokens counted across gradient accumulation,
`num_items_in_batch`). Prompt tokens are context, never targets. A long prompt keeps its last
`max_prompt_length` tokens (default max_length // 2), so the completion always has room.

Records whose completion holds a turn that is not the assistant's are skipped and counted
(`skipped_records` in the summary): training on them would teach the model to write that turn.
Dropout stays as the model has it (no reference model here; TRL's SFT leaves it too). LoRA as in DPO.

Run: `accelerate launch -m rlaif.train.sft CONFIG.yaml` (or `python -m rlaif.train.sft CONFIG.yaml`).
"""

from __future__ import annotations

import sys
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Sequence

import torch
from pydantic import Field

from rlaif.config import DEFAULT_MODEL
from rlaif.errors import UserError
from rlaif.train.config import PairTrainConfig
from rlaif.train.encoding import encode
from rlaif.train.examples import PromptCompletion, pad, pad_id, padded, parse_prompt_completion, read_usable
from rlaif.train.models import LoraSettings, load_policy, start_training
from rlaif.train.run_log import gather_sum
from rlaif.train.trainer import Run, example_stream, run_main


class SFTConfig(PairTrainConfig):
    policy: str = Field(DEFAULT_MODEL, description="starting policy: embedded:NAME, local dir, hub id")
    data: str | None = Field(None, description="prompt/completion JSONL (e.g. critique/sl_cai.jsonl)")
    learning_rate: float = Field(2e-5, gt=0, description="TRL's SFT default")
    lora: LoraSettings | None = Field(
        None, description="LoRA adapters (r, alpha, dropout, target modules); unset: every weight is trained")


# the logged curves: the summary gives their first and last values, train_curves.png draws them
CURVES = ("loss", "eval_loss")


# ---------------------------------------------------------------- records


def read_sft(path: str | Path) -> tuple[list[PromptCompletion], Counter]:
    """-> (usable examples, count of skipped records by reason); a malformed record is a UserError."""
    return read_usable(path, parse_prompt_completion, "prompt/completion records")


# ---------------------------------------------------------------- the loss


def completion_nll(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor):
    """-> per example (Σ_t −log π(y_t | x, y_<t) over its completion tokens, their number).

    Position t's logits predict token t+1; a token is a target when its own mask bit is 1, so the
    prompt's tokens (mask 0) never are, whatever they are. The log-softmax runs on the target
    positions only."""
    targets = completion_mask[:, 1:].bool()
    logp = logits[:, :-1][targets].float().log_softmax(-1)
    nll = -logp.gather(-1, input_ids[:, 1:][targets].unsqueeze(-1)).squeeze(-1)
    per_row = torch.zeros(logits.shape[0], dtype=nll.dtype, device=nll.device)
    return per_row.index_add(0, targets.nonzero()[:, 0], nll), targets.sum(-1)


def sft_loss(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Mean NLL per completion token of one batch (TRL's SFT loss on that batch)."""
    nll, n = completion_nll(logits, input_ids, completion_mask)
    return nll.sum() / n.sum().clamp(min=1)


# ---------------------------------------------------------------- batches


class SFTBatches:
    """Tokenised examples -> right-padded batches with completion masks; `targets[i]` counts example
    i's target tokens (for the per-step token count)."""

    def __init__(self, tokenizer, examples: Sequence[PromptCompletion], max_length: int,
                 max_prompt_length: int | None = None, system_prompt: str | None = None):
        self.pad = pad_id(tokenizer)
        self.items = [encode(tokenizer, e.prompt, e.completion, max_length, max_prompt_length, system_prompt)
                      for e in examples]
        self.targets = [sum(mask[1:]) for _, mask in self.items]

    def __call__(self, idx: list[int]) -> dict:
        ids, attention_mask = padded([self.items[i][0] for i in idx], self.pad)
        return {"input_ids": ids, "attention_mask": attention_mask,
                "completion_mask": pad([self.items[i][1] for i in idx], 0),
                "idx": torch.tensor(idx, dtype=torch.long)}


def batch_nll(model, batch: dict):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return completion_nll(logits, batch["input_ids"], batch["completion_mask"])


@torch.no_grad()
def evaluate(accelerator, model, loader) -> dict:
    """Mean NLL per completion token over the whole file (duplicates from uneven sharding dropped)."""
    model.eval()
    total, count = 0.0, 0
    for batch in loader:
        nll, n = accelerator.gather_for_metrics(batch_nll(model, batch))
        total += nll.sum().item()
        count += int(n.sum().item())
    model.train()
    return {"loss": total / max(count, 1), "tokens": count}


# ---------------------------------------------------------------- training


def step_token_counts(targets: Sequence[int], order: Sequence[int], per_step: int) -> list[int]:
    """Completion tokens of each optimizer step: the loss's denominator (TRL's `num_items_in_batch`)."""
    return [sum(targets[i] for i in order[s:s + per_step]) for s in range(0, len(order), per_step)]


def train_sft(cfg: SFTConfig) -> dict:
    if not cfg.data:
        raise UserError("sft: no data; set `data` (a prompt/completion JSONL such as critique/sl_cai.jsonl)")
    run = Run.start(cfg, "sft", cfg.policy)
    examples, skipped = read_sft(cfg.data)
    eval_examples, eval_skipped = read_sft(cfg.eval_file) if cfg.eval_file else (None, None)
    run.left_out(skipped, "skipped_records")
    if eval_examples:
        run.left_out(eval_skipped, "eval_skipped_records", "eval")
    model = start_training(load_policy(run.path, cfg.dtype, cfg.lora, dropout=True), cfg)

    steps, order = example_stream(cfg, len(examples))
    batches = partial(SFTBatches, run.tokenizer, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                      system_prompt=cfg.system_prompt)
    collate = batches(examples)
    step_tokens = step_token_counts(collate.targets, order, cfg.batch_size * cfg.grad_accum)
    model, optimizer, loader, scheduler = run.prepare(model, order, collate, steps)
    evals = {}
    if eval_examples:
        evals["eval"] = partial(evaluate, run.accelerator, model, run.eval_loader(len(eval_examples),
                                                                                 batches(eval_examples)))

    # backward() divides by grad_accum and DDP averages over processes: scale both back, so the
    # gradient is that of Σ NLL / (completion tokens of the whole step)
    scale = cfg.grad_accum * run.accelerator.num_processes

    def loss(batch, step):
        nll = batch_nll(model, batch)[0].sum()
        return nll * scale / max(step_tokens[step], 1), {"nll": nll.detach().float()}

    def row(micro, step):
        tokens = step_tokens[step - 1]
        return {"loss": gather_sum(run.accelerator, sum(m["nll"] for m in micro)) / max(tokens, 1), "tokens": tokens}

    step = run.optimise(model, optimizer, scheduler, loader, steps, loss, evals, row)
    result = {"train_examples": len(examples), "completion_tokens": sum(collate.targets)}
    return run.finish(model, step, result, CURVES, CURVES, lora=bool(cfg.lora))


# `python -m rlaif.train.sft CONFIG.yaml [--set key=value ...]`, also under `accelerate launch -m`.
main = partial(run_main, SFTConfig, train_sft, "sft")


if __name__ == "__main__":
    sys.exit(main())
