"""What the policy trainers on preference pairs (DPO and its reference-free losses, ORPO) share: a
preference file read and batched (chosen and rejected tokenised on the same prompt tokens,
right-padded into one batch [chosen…, rejected…] with completion masks), and what one forward over
a pair gives: per sequence the completion's summed log-probability
log π(y|x) = Σ_t log π(y_t | x, y_<t), its token count |y| and the per-token log-probs for an SFT term.

The SFT term the reference-free losses carry (CPO's α·NLL, ORPO's L_SFT) is, on hard labels, the
token mean of −log π over the chosen completions of the batch, as TRL computes it. With a soft label
p (the probability that `chosen` is the better reply) each side's tokens count with the probability
that it is the better one:

    NLL_p = Σ_i [p_i·(−log π(y_c,i)) + (1 − p_i)·(−log π(y_r,i))] / Σ_i [p_i·|y_c,i| + (1 − p_i)·|y_r,i|]

At p = 1 it is TRL's chosen-only token mean; at p = 0.5 both replies are imitated alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from rlaif.train.encoding import encode
from rlaif.train.examples import Pair, pad, pad_id, padded, read_pairs
from rlaif.train.maths import token_logps


class CompletionPairs:
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
        ids, attention_mask = padded(seqs, self.pad)
        return {"input_ids": ids, "attention_mask": attention_mask,
                "completion_mask": pad(masks, 0),
                "p": torch.tensor([x[4] for x in items], dtype=torch.float32),
                "idx": torch.tensor(idx, dtype=torch.long)}


def completion_pairs(run, path: str, what: str = "") -> tuple[list[Pair], CompletionPairs]:
    """A preference file's usable pairs and their batches, with the run's config (`rlaif.train.trainer.Run`);
    the records it left out go to the summary (`skipped_pairs`, or `eval_skipped_pairs` for what="eval")."""
    cfg = run.cfg
    pairs, skipped = read_pairs(path)
    run.left_out(skipped, f"{what}_skipped_pairs" if what else "skipped_pairs", what)
    return pairs, CompletionPairs(run.tokenizer, pairs, cfg.max_length, cfg.soft_labels, cfg.max_prompt_length,
                                  cfg.system_prompt)


@dataclass
class PairLogps:
    """Per sequence of a [chosen…, rejected…] batch (2n rows): the completion's log π summed, its
    token count, and the per-token log-probs with the masks they are read under (shifted by one:
    position t scores token t + 1)."""

    sums: torch.Tensor  # [2n]
    counts: torch.Tensor  # [2n]
    tokens: torch.Tensor  # [2n, T − 1]
    completion: torch.Tensor  # [2n, T − 1] 1 on completion tokens
    attended: torch.Tensor  # [2n, T − 1] 1 on every real token after the first (prompt and completion)

    @property
    def n(self) -> int:
        return self.sums.shape[0] // 2

    def chosen_rejected(self, average: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(log π(y_c), log π(y_r)), or their per-token means log π(y)/|y| when `average`."""
        x = self.sums / self.counts.clamp(min=1) if average else self.sums
        return x[:self.n], x[self.n:]


def pair_logps(model, batch: dict) -> PairLogps:
    """One forward over chosen and rejected."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    tokens = token_logps(logits[:, :-1].float(), batch["input_ids"][:, 1:])
    completion = batch["completion_mask"][:, 1:].to(tokens.dtype)
    attended = batch["attention_mask"][:, 1:].to(tokens.dtype)
    return PairLogps((tokens * completion).sum(-1), completion.sum(-1), tokens, completion, attended)


def soft_nll(lp: PairLogps, p: torch.Tensor | float, on: str = "completion") -> torch.Tensor:
    """NLL_p (the module docstring): the p-weighted token mean of −log π over chosen and rejected.
    `on`: "completion" (the replies' tokens) or "all" (prompt and reply, every real token after the
    first: what TRL's ORPOTrainer and the ORPO authors' code imitate)."""
    mask = lp.completion if on == "completion" else lp.attended
    p = torch.as_tensor(p, dtype=lp.tokens.dtype, device=lp.tokens.device).expand(lp.n)
    w = torch.cat([p, 1 - p])
    nll = -(lp.tokens * mask).sum(-1)
    return (w * nll).sum() / (w * mask.sum(-1)).sum().clamp(min=1e-8)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − eˣ) for x < 0, stable on both sides of −ln 2 (Mächler 2012)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


__all__ = ["CompletionPairs", "completion_pairs", "PairLogps", "pair_logps", "soft_nll", "log1mexp"]
