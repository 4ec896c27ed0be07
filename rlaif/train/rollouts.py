"""What the trainers that sample their own replies (PPO, GRPO) share: prompts batched left-padded
for generation, the replies' mask (up to and including the first EOS) and text, prompt and reply
joined into one sequence with its positions, and the replies' log-probs at the sampling temperature."""

from __future__ import annotations

from typing import Sequence

import torch

from rlaif.tensors import positions
from rlaif.train.encoding import render_prompt
from rlaif.train.examples import Messages, pad, pad_id
from rlaif.train.maths import token_logps


class PromptBatches:
    """Prompt records -> left-padded prompt ids (chat template applied), plus the messages."""

    def __init__(self, tokenizer, prompts: Sequence[Messages], max_prompt_len: int, system_prompt: str | None = None):
        self.pad = pad_id(tokenizer)
        self.prompts = list(prompts)
        self.ids = []
        for p in self.prompts:
            ids = tokenizer(render_prompt(tokenizer, p, system_prompt), add_special_tokens=False)["input_ids"]
            self.ids.append(ids[-max_prompt_len:])

    def __call__(self, idx: list[int]) -> dict:
        seqs = [self.ids[i] for i in idx]
        ids = pad(seqs, self.pad, side="left")
        lengths = torch.tensor([len(s) for s in seqs])
        mask = (torch.arange(ids.shape[1])[None] >= ids.shape[1] - lengths[:, None]).long()
        return {"input_ids": ids, "attention_mask": mask, "idx": torch.tensor(idx)}


def response_mask(responses: torch.Tensor, eos_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """1 up to and including the first EOS (or everywhere when none); also whether an EOS was seen."""
    T = responses.shape[1]
    if eos_id is None:
        return torch.ones_like(responses), torch.zeros(len(responses), dtype=torch.bool)
    is_eos = responses == eos_id
    has = is_eos.any(1)
    first = torch.where(has, is_eos.float().argmax(1), torch.full_like(has, T, dtype=torch.long))
    return (torch.arange(T)[None].to(responses.device) <= first[:, None]).long(), has


def decode(tokenizer, responses: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """The replies' text, up to and including the first EOS, special tokens dropped."""
    return [tokenizer.decode(r[:int(m.sum())], skip_special_tokens=True).strip() for r, m in zip(responses, mask)]


def joined(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, responses: torch.Tensor, mask: torch.Tensor):
    """Left-padded prompts and their replies as one sequence: (token ids, attention mask, positions)."""
    full_mask = torch.cat([prompt_mask, mask], 1)
    return torch.cat([prompt_ids, responses], 1), full_mask, positions(full_mask)


def response_logps(logits: torch.Tensor, responses: torch.Tensor, prompt_len: int, temperature: float):
    """Log-probs (and the logits that gave them) of the response tokens, at the sampling temperature."""
    logits = logits[:, prompt_len - 1:-1].float() / temperature
    return token_logps(logits, responses), logits


__all__ = ["PromptBatches", "response_mask", "decode", "joined", "response_logps"]
