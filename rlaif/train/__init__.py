"""Training on AI feedback: own loops on transformers + accelerate.

- `reward_model`: scalar-head sequence classifier, soft-label Bradley–Terry loss (distilled RLAIF).
- `dpo`: DPO (sigmoid) and IPO with soft targets from `p_chosen`; optional LoRA.
- `sft`: SL-CAI fine-tuning on prompt/completion records, loss on the completion tokens only.
- `kto`: KTO on completions labelled desirable/undesirable (or scores, or unpaired preference pairs).
- `ppo`: PPO with a per-token KL penalty, GAE and a value head; reward from a reward model or any
  `reward_fn(prompts, responses)` (direct RLAIF).
- `best_of_n`: sample N, keep the best by reward; a stage and a baseline.
- `common`, `plots`: shared tokenisation/collation/accelerate setup, and the plots.

Every trainer runs under `accelerate launch` unchanged; batches are global and split over
processes. CPU multi-process: `accelerate launch --multi_gpu --num_processes 2 -m rlaif.train.dpo
CONFIG.yaml` (or torchrun) on a machine without GPUs runs gloo on CPU.
"""
