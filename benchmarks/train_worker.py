"""One trainer in its own process (so peak RSS is its own and no accelerate state leaks):

    python -m benchmarks.train_worker {ours-dpo,trl-dpo,trl-dpo-precompute,ours-rm,trl-rm} \
        --model DIR --prefs FILE --steps N --batch B --max-length L --out DIR

Prints one JSON line: per-step wall times, the losses of every step, setup seconds (before the
first step, e.g. our reference log-prob pass), total seconds and peak RSS (MB).
Same settings on both sides: AdamW, constant LR, no warm-up, no weight decay, grad-norm clip 1.0,
fp32, seed 0, every step over the same B pairs (the file holds exactly B pairs), sigmoid DPO β=0.1.
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ours(kind: str, a) -> dict:
    t0 = time.time()
    if kind == "dpo":
        from rlaif.train.dpo import DPOConfig, train_dpo as train

        cfg = DPOConfig(policy=a.model, prefs=a.prefs, learning_rate=a.lr_dpo, beta=0.1, soft_labels=False)
    else:
        from rlaif.train.reward_model import RewardConfig, train_reward_model as train

        cfg = RewardConfig(base=a.model, prefs=a.prefs, learning_rate=a.lr_rm)
    cfg = cfg.model_copy(update=dict(output_dir=a.out, batch_size=a.batch, max_steps=a.steps, max_length=a.max_length,
                                     weight_decay=0.0, warmup_steps=0, max_grad_norm=1.0, seed=0, save=False,
                                     progress=False, log_every=1, eval_batch_size=a.batch))
    started = time.time()
    train(cfg)
    total = time.time() - started
    rows = [json.loads(l) for l in open(f"{a.out}/train_log.jsonl")]
    # TrainLog's clock starts just before the first step (after the reference pass for DPO)
    ends = [r["elapsed_s"] for r in rows]
    steps = [ends[0]] + [b - c for b, c in zip(ends[1:], ends[:-1])]
    return {"step_s": steps, "loss": [r["loss"] for r in rows], "setup_s": total - ends[-1],
            "total_s": total, "import_and_start_s": started - t0, "peak_rss_mb": peak_rss_mb()}


def trl(kind: str, a) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from rlaif.records import read_jsonl
    from rlaif.train.models import load_tokenizer
    from rlaif.train.trainer import seed_everything

    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in read_jsonl(a.prefs)]
    tok = load_tokenizer(a.model)
    seed_everything(0)

    class Clock(TrainerCallback):
        def __init__(self):
            self.step_s, self.loss, self.t = [], [], None

        # wall time between consecutive step ends, as ours is measured (between train_log rows):
        # batch collation, the step, logging, all of it; on_step_begin would leave out the data
        # loading and the logging that happen outside TRL's on_step_begin/on_step_end window
        def on_train_begin(self, args, state, control, **kw):
            self.t = time.time()

        def on_step_end(self, args, state, control, **kw):
            now = time.time()
            self.step_s.append(now - self.t)
            self.t = now

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.loss.append(logs["loss"])

    clock = Clock()
    common = dict(output_dir=a.out, per_device_train_batch_size=a.batch, max_steps=a.steps, lr_scheduler_type="constant",
                  warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, report_to=[], use_cpu=True,
                  bf16=False, save_strategy="no", seed=0, data_seed=0, max_length=a.max_length,
                  dataloader_num_workers=0, disable_tqdm=True,
                  # TRL 1.16's trainer configs default to activation checkpointing, ours does not:
                  # compare like with like (it was the whole 1.33x RSS gap on the RM)
                  gradient_checkpointing=False)
    if kind.startswith("dpo"):
        from transformers import AutoModelForCausalLM
        from trl import DPOConfig, DPOTrainer

        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
        args = DPOConfig(learning_rate=a.lr_dpo, beta=0.1, loss_type=["sigmoid"],
                         precompute_ref_log_probs=kind == "dpo-precompute", **common)
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             callbacks=[clock])
    else:
        from trl import RewardConfig, RewardTrainer

        from rlaif.train.reward_model import load_reward_model

        model = load_reward_model(a.model, tok)  # same head init as ours: same seed, same loader
        args = RewardConfig(learning_rate=a.lr_rm, **common)
        trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                                callbacks=[clock])
    started = time.time()
    trainer.train()
    total = time.time() - started
    return {"step_s": clock.step_s, "loss": clock.loss, "setup_s": total - sum(clock.step_s), "total_s": total,
            "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("which", choices=["ours-dpo", "trl-dpo", "trl-dpo-precompute", "ours-rm", "trl-rm"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prefs", required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--lr-dpo", type=float, default=5e-6)
    ap.add_argument("--lr-rm", type=float, default=2e-5)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    side, kind = a.which.split("-", 1)
    res = ours(kind, a) if side == "ours" else trl(kind, a)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
