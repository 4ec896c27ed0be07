"""Reward-model ensembles against over-optimisation (Coste et al. 2024; Eisenstein et al. 2023).

K reward models are trained by `rlaif train-rm`'s trainer, member k on a bootstrap resample of the
preference file: n records drawn with replacement, with a generator seeded by (seed, k) alone, so
the same seed gives the same subsets (and member k's own training seed is seed + k). A policy that
exploits one member's quirks is caught by the others; the conservative reward for a response is

    R = mean_k r_k − λ · std_k r_k        ("mean-std", uncertainty-weighted; std with 1/K)
    R = min_k r_k                          ("min", worst-case)

Layout: `OUT/member_K/` is a reward-model folder (trained on `OUT/member_K/bootstrap.jsonl`), and
`OUT/ensemble.yaml` lists the members, the mode and λ. Use it as `--reward ensemble:OUT[,lambda=L|,min]`
or `--reward ensemble:DIR1,DIR2,...[,lambda=L|,min]` (at least two members).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import torch
from pydantic import Field

from rlaif.config import Strict, load_config
from rlaif.errors import UserError
from rlaif.records import read_jsonl


class EnsembleConfig(Strict):
    members: list[str]  # reward-model folders (relative to ensemble.yaml's folder, or absolute)
    mode: Literal["mean-std", "min"] = "mean-std"
    lam: float = Field(1.0, ge=0)  # λ of mean − λ·std
    seed: int = 0


def conservative(scores: torch.Tensor, mode: str = "mean-std", lam: float = 1.0) -> torch.Tensor:
    """scores [K, N] (member × response) -> [N]: mean − λ·std (population std) or min over members."""
    if scores.shape[0] < 2:
        raise UserError(f"ensemble: {scores.shape[0]} member(s); an ensemble needs K >= 2")
    if mode == "min":
        return scores.min(0).values
    return scores.mean(0) - lam * scores.std(0, correction=0)


def bootstrap_indices(n: int, seed: int, member: int) -> list[int]:
    """n draws with replacement from range(n), from (seed, member) only."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * member + 1)
    return torch.randint(n, (n,), generator=g).tolist()


def check_k(k: int, where: str = "--k") -> None:
    if k < 2:
        raise UserError(f"{where}: field 'k': K = {k}; an ensemble needs K >= 2 reward models")


def train_ensemble(cfg, k: int, *, mode: str = "mean-std", lam: float = 1.0) -> dict:
    """Train K members on seeded bootstrap resamples of `cfg.prefs` into `cfg.output_dir`;
    `cfg` is a RewardConfig. -> summary (members' end accuracies and losses)."""
    from rlaif.records import write_jsonl_atomic
    from rlaif.train.common import read_pairs, write_json
    from rlaif.train.reward_model import train_reward_model

    import yaml

    check_k(k)
    if not cfg.prefs:
        raise UserError("train-rm-ensemble: no training preferences; set `prefs` (--prefs FILE)")
    read_pairs(cfg.prefs)  # a bad file fails before anything is written
    rows = read_jsonl(cfg.prefs)
    out = Path(cfg.output_dir)
    members, results = [], []
    for m in range(k):
        folder = out / f"member_{m}"
        folder.mkdir(parents=True, exist_ok=True)
        data = folder / "bootstrap.jsonl"
        write_jsonl_atomic(data, [rows[i] for i in bootstrap_indices(len(rows), cfg.seed, m)])
        member_cfg = cfg.model_copy(update={"prefs": str(data), "output_dir": str(folder), "seed": cfg.seed + m})
        results.append(train_reward_model(member_cfg))
        members.append(folder.name)
    ens = EnsembleConfig(members=members, mode=mode, lam=lam, seed=cfg.seed)
    from rlaif.records import write_atomic

    write_atomic(out / "ensemble.yaml", yaml.safe_dump(ens.model_dump(), sort_keys=False))
    summary = {"k": k, "mode": mode, "lam": lam, "seed": cfg.seed,
               "members": [{"folder": f, **{key: r.get(key) for key in ("loss_end", "accuracy_end",
                                                                        "eval_accuracy_end", "human_accuracy_end")}}
                           for f, r in zip(members, results)]}
    write_json(out / "ensemble_summary.json", summary)
    return summary


def parse_ensemble_spec(arg: str) -> EnsembleConfig:
    """`DIR` (a folder with ensemble.yaml), `DIR1,DIR2,...` (reward-model folders), either followed
    by `,lambda=L` or `,min` (which override the folder's own setting) -> absolute member folders."""
    from rlaif.train.reward_combine import check_rm_folder

    where = f"ensemble:{arg}"
    mode, lam, members, saved = None, None, [], None
    for part in (p for p in arg.split(",") if p):
        if part == "min":
            mode = "min"
        elif part.startswith("lambda="):
            try:
                lam = float(part.split("=", 1)[1])
            except ValueError:
                raise UserError(f"{where}: field 'lambda': expected a number, got {part!r}") from None
            if lam < 0:
                raise UserError(f"{where}: field 'lambda': expected a number >= 0, got {lam}")
        elif (Path(part) / "ensemble.yaml").is_file():
            root = Path(part)
            saved = load_config(EnsembleConfig, root / "ensemble.yaml")
            members += [str(Path(m) if Path(m).is_absolute() else root / m) for m in saved.members]
        else:
            members.append(part)
    check_k(len(members), where)
    members = [str(check_rm_folder(m, "members", where)) for m in members]
    return EnsembleConfig(members=members, mode=mode or (saved.mode if saved else "mean-std"),
                          lam=lam if lam is not None else (saved.lam if saved else 1.0),
                          seed=saved.seed if saved else 0)


class EnsembleReward:
    """`reward(prompts, responses) -> conservative R`; `member_scores` gives the [K, N] matrix."""

    def __init__(self, cfg: EnsembleConfig, device="cpu", batch_size: int = 16, max_length: int = 512,
                 scorers: Sequence | None = None):
        from rlaif.train.reward_model import RewardScorer

        self.cfg = cfg
        self.scorers = list(scorers) if scorers is not None else [
            RewardScorer(m, device=device, batch_size=batch_size, max_length=max_length) for m in cfg.members]
        check_k(len(self.scorers), "ensemble")

    def member_scores(self, prompts: Sequence, responses: Sequence[str]) -> torch.Tensor:
        return torch.tensor([[float(s) for s in scorer(prompts, responses)] for scorer in self.scorers],
                            dtype=torch.float64)

    def __call__(self, prompts: Sequence, responses: Sequence[str]) -> list[float]:
        return conservative(self.member_scores(prompts, responses), self.cfg.mode, self.cfg.lam).tolist()
