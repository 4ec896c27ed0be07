"""The tensor maths several trainers share: log-probabilities of tokens and of completions, masked
means, whitening over a global batch, entropy, and a pair's accuracy under a soft label."""

from __future__ import annotations

import torch


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[labels] without materialising the full log-softmax twice."""
    return torch.gather(logits.log_softmax(-1), -1, labels.unsqueeze(-1)).squeeze(-1)


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor,
                   average: bool = False) -> torch.Tensor:
    """Sum (or mean) over masked positions of log p(token_t | tokens_<t). `mask` marks the tokens
    being scored (the completion), aligned with `input_ids`."""
    logits = logits[:, :-1].float()
    labels = input_ids[:, 1:]
    m = mask[:, 1:].to(logits.dtype)
    logp = token_logps(logits, labels)
    total = (logp * m).sum(-1)
    return total / m.sum(-1).clamp(min=1) if average else total


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, accelerator=None) -> torch.Tensor:
    """(x − mean) / std over the masked entries (std unbiased, as TRL/baselines do). With an
    `accelerator`, mean and variance are those of every process's masked entries together (the
    sums are gathered; shard shapes may differ), so whitening a global batch split over processes
    equals whitening it whole. TRL whitens each process's share on its own."""
    m = mask.to(x.dtype)

    def total(v: torch.Tensor) -> torch.Tensor:
        return v if accelerator is None else accelerator.gather(v.reshape(1, -1)).sum(0)

    s, n = total(torch.stack([(x * m).sum(), m.sum()]))
    mean = s / n.clamp(min=1)
    var = total(((x - mean) ** 2 * m).sum().reshape(1))[0] / n.clamp(min=1)
    if n > 1:
        var = var * n / (n - 1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def pair_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Per pair: 1 if the reward agrees with the label's side (p > 0.5 → chosen), 0.5 on a tie of
    either; pairs labelled exactly 0.5 count as 0.5. The reward model's accuracy, and DPO's and
    ORPO's on their implicit rewards."""
    d = torch.sign(r_chosen - r_rejected)
    y = torch.sign(p - 0.5)
    return torch.where((d == 0) | (y == 0), torch.full_like(d, 0.5), (d == y).to(d.dtype))


__all__ = ["token_logps", "sequence_logps", "masked_mean", "masked_whiten", "entropy_from_logits", "pair_accuracy"]
