"""Run under `accelerate launch` (tests/train/test_train_fsdp.py): build PPO's accelerator and reward
function the way `train_ppo` does, score one fixed (prompt, reply) on every rank, gather the
scores, and print them from rank 0 as one JSON line, with whether transformers' rank-0-only loading
was switched on in these processes."""

from __future__ import annotations

import json
import os
import sys

import torch
import yaml

from rlaif.train.trainer import make_accelerator
from rlaif.train.distributed import RAM_EFFICIENT_LOADING, unsharded_loading
from rlaif.train.ppo import PPOConfig, make_reward_fn


def main(path: str) -> None:
    cfg = PPOConfig(**yaml.safe_load(open(path)))
    accelerator = make_accelerator(cfg, sync_with_dataloader=False)
    from transformers.integrations import is_fsdp_enabled

    rank0_only = is_fsdp_enabled()  # what from_pretrained would see outside the block
    with unsharded_loading(accelerator):
        reward_fn = make_reward_fn(cfg, accelerator.device)
    score = reward_fn([[{"role": "user", "content": "say hi"}]], ["hi there, friend."])
    gathered = accelerator.gather(torch.tensor([float(s) for s in score], device=accelerator.device))
    if accelerator.is_main_process:
        print(json.dumps({"scores": gathered.tolist(), "rank0_only_loading": rank0_only,
                          "env_after": os.environ.get(RAM_EFFICIENT_LOADING)}), flush=True)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
