"""Training on AI feedback: own loops on transformers + accelerate.

The trainers (each file its config, its batches, its loss; none imports another):
- `sft`: SL-CAI fine-tuning on prompt/completion records, loss on the completion tokens only.
- `reward_model`: scalar-head sequence classifier, soft-label Bradley–Terry loss on pairs, or
  Plackett–Luce on rankings of K replies (distilled RLAIF); `RewardScorer` scores with a saved one.
- `dpo`: DPO (sigmoid) and IPO with soft targets from `p_chosen`, and the reference-free SimPO and CPO.
- `orpo`: ORPO, SFT and an odds-ratio preference term in one loss, no reference model.
- `kto`: KTO on completions labelled desirable/undesirable (or scores, or unpaired preference pairs).
- `ppo`: PPO with a per-token KL penalty, GAE and a value head; reward from a reward model or any
  `reward_fn(prompts, responses)` (direct RLAIF).
- `grpo` (maths and config) and `grpo_loop` (the loop): GRPO, RLOO and Dr. GRPO, the group as baseline.

What they share:
- `trainer`: the skeleton: a run's start (accelerator, seed, model path, tokenizer), the optimisation
  loop of the trainers on a dataset, the run's end (summary, save, manifest), the data order, the
  optimizer, and the `python -m rlaif.train.X CONFIG.yaml` entry point.
- `config`: `TrainConfig` (the fields every trainer's config extends) and `PairTrainConfig`.
- `examples`: records read into pairs, prompt/completion examples and prompts (unusable ones skipped
  and counted); padding. `encoding`: the tokens of prompt + completion, the prompt as the engines
  build it.
- `models`: model specs resolved, tokenizers, dtypes, the policy (dropout off, LoRA), activation
  checkpointing, the frozen reference.
- `maths`: log-probs of tokens and completions, masked means, whitening, entropy, pair accuracy.
- `pair_logps`: the pair batches and the forward over a pair of the policy trainers on pairs (DPO, ORPO).
- `rollouts`: what PPO and GRPO share: prompt batches for generation, reply masks and text, the
  replies' log-probs at the sampling temperature.
- `rewards`: the online rewards (judge direct and pairwise, reward models, rules) and their sum;
  `reward_combine`: a helpful and a harmless RM combined the Llama 2 way.
- `run_log`: `train_log.jsonl`, the summary of the curves, the end-of-run files; `plots`: the plots.
- `distributed`: what sharding (FSDP, ZeRO) changes: saving, generation, frozen models, checks.
- `launcher`: a pipeline's training stages as `accelerate launch` subprocesses.

Recipes, which run trainers: `rejection_sampling` (best-of-K, then SFT on the best) and
`reward_ensemble` (K reward models on bootstrap resamples, a conservative reward). And `best_of_n`:
sample N from any engine, keep the best by reward (a stage, a baseline, rejection sampling's first half).

Every trainer runs under `accelerate launch` unchanged; batches are global and split over
processes. CPU multi-process: `accelerate launch --multi_gpu --num_processes 2 -m rlaif.train.dpo
CONFIG.yaml` (or torchrun) on a machine without GPUs runs gloo on CPU.
"""
