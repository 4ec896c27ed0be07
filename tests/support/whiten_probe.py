"""Run under `accelerate launch` with 2 processes (tests/train/test_train_distributed.py): each rank
whitens its own shard of one fixed masked batch with PPO's `masked_whiten(..., accelerator)`, and
rank 0 prints every rank's result as one JSON line. The shards differ in shape, as PPO's do (each
process pads its responses to its own longest)."""

from __future__ import annotations

import json

import torch
from accelerate import Accelerator

from rlaif.train.maths import masked_whiten


def shards() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two shards of a global batch: 3 rows × 5 tokens and 2 rows × 3 tokens, masks of mixed length."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 5, generator=g, dtype=torch.float64) * 2 + 1
    b = torch.randn(2, 3, generator=g, dtype=torch.float64) * 0.5 - 3  # another mean and spread
    ma = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.float64)
    mb = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.float64)
    return [(a, ma), (b, mb)]


def main() -> None:
    accelerator = Accelerator(cpu=True)
    x, mask = shards()[accelerator.process_index]
    out = {"advantages": masked_whiten(x, mask, accelerator=accelerator) * mask,
           "rewards": masked_whiten(x, mask, shift_mean=False, accelerator=accelerator) * mask}
    rows = {k: [None] * accelerator.num_processes for k in out}
    for k, v in out.items():
        flat = torch.cat([torch.tensor([float(accelerator.process_index), v.numel()], dtype=torch.float64),
                          v.flatten(), torch.zeros(15 - v.numel(), dtype=torch.float64)])
        for row in accelerator.gather(flat.reshape(1, -1)):
            rank, n = int(row[0]), int(row[1])
            rows[k][rank] = row[2:2 + n].tolist()
    if accelerator.is_main_process:
        print(json.dumps({"processes": accelerator.num_processes, **rows}), flush=True)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
