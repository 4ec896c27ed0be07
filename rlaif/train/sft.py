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
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from pydantic import Field
from tqdm.auto import tqdm

from rlaif.errors import UserError
from rlaif.train.common import (Messages, PairTrainConfig, TrainLog, UnusablePair, field_messages, encode,
                                example_stream, finish_run, load_tokenizer, make_accelerator, make_optimizer,
                                pad, pad_id, resolve, seed_everything, start_training, summary, torch_dtype)
from rlaif.train.distributed import save_model
from rlaif.train.dpo import DEFAULT_POLICY, LoraSettings, apply_lora
from rlaif.train.examples import read_usable


class SFTConfig(PairTrainConfig):
    policy: str = DEFAULT_POLICY  # starting policy: embedded:NAME, local dir, hub id
    data: str | None = None  # prompt/completion JSONL (e.g. critique/sl_cai.jsonl)
    learning_rate: float = Field(2e-5, gt=0)  # TRL's SFT default
    lora: LoraSettings | None = None


# ---------------------------------------------------------------- records


@dataclass
class PromptCompletion:
    prompt: Messages | str
    completion: Messages | str
    conversational: bool = True


def parse_prompt_completion(rec: dict, where: str, kind: str = "SFT") -> PromptCompletion:
    """TRL prompt–completion shapes: plain strings, or `prompt` chat messages (a string is one user
    turn) and `completion` assistant messages. Shared by SFT and KTO."""
    for key in ("prompt", "completion"):
        if key not in rec:
            raise UserError(f"{where}: missing field {key!r}; expected a {kind} record with prompt and completion "
                            "(strings, or chat messages and assistant messages)")
    prompt, completion = rec["prompt"], rec["completion"]
    if isinstance(prompt, str) and isinstance(completion, str):
        return PromptCompletion(prompt, completion, False)
    prompt = field_messages(prompt, "user", where, "prompt")
    completion = field_messages(completion, "assistant", where, "completion")
    if any(m["role"] != "assistant" for m in completion):
        raise UnusablePair(where, "non_assistant_turn_in_completion",
                           "field 'completion' holds a turn that is not the assistant's")
    return PromptCompletion(prompt, completion, True)


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
        seqs = [self.items[i][0] for i in idx]
        ids = pad(seqs, self.pad)
        lengths = torch.tensor([len(s) for s in seqs])
        return {"input_ids": ids,
                "attention_mask": (torch.arange(ids.shape[1])[None] < lengths[:, None]).long(),
                "completion_mask": pad([self.items[i][1] for i in idx], 0),
                "idx": torch.tensor(idx, dtype=torch.long)}


def batch_nll(model, batch: dict):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return completion_nll(logits, batch["input_ids"], batch["completion_mask"])


def gather_sum(accelerator, value: torch.Tensor) -> float:
    return accelerator.gather(value.detach().float().reshape(1)).sum().item()


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


def load_policy(path: str, dtype: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype))


def step_token_counts(targets: Sequence[int], order: Sequence[int], per_step: int) -> list[int]:
    """Completion tokens of each optimizer step: the loss's denominator (TRL's `num_items_in_batch`)."""
    return [sum(targets[i] for i in order[s:s + per_step]) for s in range(0, len(order), per_step)]


def train_sft(cfg: SFTConfig) -> dict:
    if not cfg.data:
        raise UserError("sft: no data; set `data` (a prompt/completion JSONL such as critique/sl_cai.jsonl)")
    accelerator = make_accelerator(cfg)
    seed_everything(cfg.seed)
    out = Path(cfg.output_dir)
    path = resolve(cfg.policy)
    tokenizer = load_tokenizer(path)
    examples, skipped = read_sft(cfg.data)
    eval_examples, eval_skipped = read_sft(cfg.eval_file) if cfg.eval_file else (None, Counter())
    skipped.announce("sft", accelerator.is_main_process)
    if cfg.eval_file:
        eval_skipped.announce("sft (eval)", accelerator.is_main_process)
    model = load_policy(path, cfg.dtype)
    if cfg.lora:
        model = apply_lora(model, cfg.lora)
    start_training(model, cfg)

    per_step = cfg.batch_size * cfg.grad_accum
    steps, order = example_stream(cfg, len(examples))
    collate = SFTBatches(tokenizer, examples, cfg.max_length, cfg.max_prompt_length, cfg.system_prompt)
    step_tokens = step_token_counts(collate.targets, order, per_step)
    loader = torch.utils.data.DataLoader(order, batch_size=cfg.batch_size, collate_fn=collate)
    optimizer, scheduler = make_optimizer(model, cfg, steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    eval_loader = None
    if eval_examples:
        eval_collate = SFTBatches(tokenizer, eval_examples, cfg.max_length, cfg.max_prompt_length, cfg.system_prompt)
        eval_loader = accelerator.prepare_data_loader(torch.utils.data.DataLoader(
            list(range(len(eval_examples))), batch_size=cfg.eval_batch_size, collate_fn=eval_collate))

    # backward() divides by grad_accum and DDP averages over processes: scale both back, so the
    # gradient is that of Σ NLL / (completion tokens of the whole step)
    scale = cfg.grad_accum * accelerator.num_processes
    log = TrainLog(out / "train_log.jsonl", enabled=accelerator.is_main_process)
    bar = tqdm(total=steps, desc="sft", disable=not (cfg.progress and accelerator.is_main_process),
               file=sys.stderr, dynamic_ncols=True)
    started = time.time()
    step, step_nll = 0, 0.0
    for batch in loader:
        with accelerator.accumulate(model):
            nll = batch_nll(model, batch)[0].sum()
            accelerator.backward(nll * scale / max(step_tokens[step], 1))
            if accelerator.sync_gradients and cfg.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        step_nll = step_nll + nll.detach().float()
        if not accelerator.sync_gradients:
            continue
        row = None
        if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
            row = {"step": step + 1, "loss": gather_sum(accelerator, step_nll) / max(step_tokens[step], 1),
                   "tokens": step_tokens[step], "lr": scheduler.get_last_lr()[0]}
        step, step_nll = step + 1, 0.0
        bar.update(1)
        if eval_loader is not None and (step % cfg.eval_every == 0 or step == steps):
            row = row or {"step": step}
            row.update({f"eval_{k}": v for k, v in evaluate(accelerator, model, eval_loader).items()})
        if row is not None:
            log.log(row)
            bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}")
    bar.close()
    seconds = time.time() - started
    log.close()

    result = summary(log, step, seconds, ["loss", "eval_loss"])
    result.update({"train_examples": len(examples), "skipped_records": dict(skipped),
                   "completion_tokens": sum(collate.targets), "processes": accelerator.num_processes,
                   "mixed_precision": accelerator.mixed_precision})
    if eval_examples:
        result["eval_skipped_records"] = dict(eval_skipped)
    accelerator.wait_for_everyone()
    if cfg.save:  # every rank: the full state dict is gathered collectively under FSDP / ZeRO-3
        save_model(accelerator, model, out, tokenizer, lora=bool(cfg.lora))
    if accelerator.is_main_process:
        finish_run(out, "sft", cfg, result, log, ["loss", "eval_loss"])
    accelerator.wait_for_everyone()
    return result


def main(argv: list[str] | None = None) -> int:
    """`python -m rlaif.train.sft CONFIG.yaml [--set key=value ...]` (works under `accelerate launch -m`)."""
    from rlaif.train.common import run_main

    return run_main(SFTConfig, train_sft, argv, "sft")


if __name__ == "__main__":
    sys.exit(main())
