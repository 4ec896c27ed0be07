"""Rejection-sampling fine-tuning (Llama 2 §3.2.3; Dong et al. 2023's RAFT): for every prompt, sample
K responses from the policy, keep the one the reward scores highest, and fine-tune the policy on
those best responses with the SFT loss (completion only, rlaif/train/sft.py).

    y*(x) = argmax_{y_1..y_K ~ π(·|x)} R(x, y_k)          L = − Σ_x log π(y*(x) | x)

Sampling and scoring are best-of-N's (rlaif/train/best_of_n.py: seeded, resumable, a tie keeps the
first sample); the reward is any reward spec (`rm:DIR`, `combined:FILE`, `ensemble:...`,
`labeler:direct`). Layout of OUT: `samples/best_of_n.jsonl` (every candidate and score),
`rs_data.jsonl` (prompt → best response, the SFT data) and the fine-tuned model with SFT's
train_log.jsonl and summary.json.

Run: `rlaif rs-ft --prompts FILE --policy SPEC --reward SPEC --n K --out DIR`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from rlaif.train.best_of_n import BestOfNConfig, RewardFn, expand, run_best_of_n


def best_to_sft(records: Sequence[dict]) -> list[dict]:
    """Best-of-N records -> SFT prompt/completion records (the kept response as the completion)."""
    return [{"id": r["id"], "prompt": r["prompt"], "completion": [{"role": "assistant", "content": r["response"]}],
             "score": r["score"], "n": r["n"]} for r in records]


def sample_best(prompts: Sequence[dict], engine, reward_fn: RewardFn, cfg: BestOfNConfig, out_dir: str | Path,
                *, overwrite: bool = False, progress: bool = True) -> tuple[Path, dict]:
    """Best-of-K into OUT/samples, then OUT/rs_data.jsonl. -> (SFT data path, best-of-N summary)."""
    from rlaif.records import read_output, write_jsonl_atomic

    out = Path(out_dir)
    summary = run_best_of_n(prompts, engine, reward_fn, cfg, out / "samples", overwrite=overwrite,
                            progress=progress)
    wanted = {item["id"] for item in expand(prompts, engine.model, cfg)}  # not an earlier run's prompts
    records = [r for r in read_output(out / "samples" / "best_of_n.jsonl") if r["id"] in wanted]
    data = out / "rs_data.jsonl"
    write_jsonl_atomic(data, best_to_sft(records))
    return data, summary


def finetune_on_best(data: Path, sft_cfg) -> dict:
    """SFT (an SFTConfig whose `data` is replaced by the kept samples) -> SFT's summary."""
    from rlaif.train.sft import train_sft

    return train_sft(sft_cfg.model_copy(update={"data": str(data)}))
