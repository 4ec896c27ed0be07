"""Reward-model ensembles against over-optimisation (Coste et al. 2024; Eisenstein et al. 2023).

K reward models are trained by `rlaif train-rm`'s trainer, member k on a bootstrap resample of the
preference file: n records drawn with replacement, with a generator seeded by (seed, k) alone, so
the same seed gives the same subsets (and member k's own training seed is seed + k). A policy that
exploits one member's quirks is caught by the others.

A Bradley–Terry loss sees only differences r(x, y_c) − r(x, y_r), so each member's additive offset
is arbitrary (initialisation and training noise set it), and the spread or the minimum across
members would mostly measure those constants. So each member is first centred on one calibration
set of (prompt, response) pairs, the same for all members:

    c_k = r_k − m_k,    m_k = mean of r_k over the calibration responses,

and the conservative reward for a response is

    R = mean_k c_k − λ_std · std_k c_k      ("mean-std"; std with 1/K)
    R = min_k c_k                            ("min", worst-case)

λ_std multiplies the standard deviation. Coste et al.'s uncertainty-weighted objective (UWO)
subtracts λ · variance instead; the std is used here because it is in reward units, so λ_std does
not change meaning when the rewards are scaled. Centring changes neither mode's ranking of a
single member's responses, only how members are compared.

Layout: `OUT/member_K/` is a reward-model folder (trained on `OUT/member_K/bootstrap.jsonl`), and
`OUT/ensemble.yaml` lists the members, the mode, λ_std and the offsets m_k (measured by
`train-rm-ensemble` on the whole preference file, both sides). Use it as
`--reward ensemble:OUT[,lambda_std=L|,min][,calibration=FILE]`, or list the members as
`--reward ensemble:DIR1,DIR2,...,calibration=FILE[,lambda_std=L|,min]` (at least two; FILE is any
JSONL `rlaif combine-rm` takes: prompt with response, candidates or chosen/rejected).
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
    lambda_std: float = Field(
        1.0, ge=0, description="λ_std of mean − λ_std·std (a standard deviation, not a variance)")
    seed: int = 0
    offsets: list[float] | None = Field(None, description="m_k: each member's mean score on the calibration set")
    calibration: str | None = Field(None, description="the calibration file the offsets come (or are to come) from")


def conservative(scores: torch.Tensor, mode: str = "mean-std", lambda_std: float = 1.0) -> torch.Tensor:
    """scores [K, N] (member × response, already centred) -> [N]: mean − λ_std·std (population std)
    or min over members."""
    if scores.shape[0] < 2:
        raise UserError(f"ensemble: {scores.shape[0]} member(s); an ensemble needs K >= 2")
    if mode == "min":
        return scores.min(0).values
    return scores.mean(0) - lambda_std * scores.std(0, correction=0)


def member_offsets(scorers: Sequence, calibration: str | Path) -> list[float]:
    """m_k: each member's mean score over the calibration responses (the same set for all)."""
    from rlaif.train.reward_combine import calibration_pairs

    prompts, texts = calibration_pairs(calibration)
    if not texts:
        raise UserError(f"{calibration}: no calibration responses; expected prompt with response, candidates "
                        "or chosen/rejected")
    return [float(sum(scores) / len(scores)) for scores in (scorer(prompts, texts) for scorer in scorers)]


def bootstrap_indices(n: int, seed: int, member: int) -> list[int]:
    """n draws with replacement from range(n), from (seed, member) only."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * member + 1)
    return torch.randint(n, (n,), generator=g).tolist()


def check_k(k: int, where: str = "--k") -> None:
    if k < 2:
        raise UserError(f"{where}: field 'k': K = {k}; an ensemble needs K >= 2 reward models")


def train_ensemble(cfg, k: int, *, mode: str = "mean-std", lambda_std: float = 1.0) -> dict:
    """Train K members on seeded bootstrap resamples of `cfg.prefs` into `cfg.output_dir`, then
    measure their offsets on the whole preference file; `cfg` is a RewardConfig. -> summary
    (members' end accuracies and losses, offsets)."""
    from rlaif.records import write_jsonl_atomic
    from rlaif.train.examples import read_pairs
    from rlaif.train.run_log import write_json
    from rlaif.train.reward_model import RewardScorer, train_reward_model

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
    device = "cuda" if torch.cuda.is_available() else "cpu"
    scorers = [RewardScorer(str(out / f), device=device, batch_size=cfg.batch_size) for f in members]
    offsets = member_offsets(scorers, cfg.prefs)
    del scorers
    ens = EnsembleConfig(members=members, mode=mode, lambda_std=lambda_std, seed=cfg.seed, offsets=offsets,
                         calibration=str(Path(cfg.prefs).resolve()))
    from rlaif.records import write_atomic

    write_atomic(out / "ensemble.yaml", yaml.safe_dump(ens.model_dump(), sort_keys=False))
    summary = {"k": k, "mode": mode, "lambda_std": lambda_std, "seed": cfg.seed, "offsets": offsets,
               "members": [{"folder": f, **{key: r.get(key) for key in ("loss_end", "accuracy_end",
                                                                        "eval_accuracy_end", "human_accuracy_end")}}
                           for f, r in zip(members, results)]}
    write_json(out / "ensemble_summary.json", summary)
    return summary


def parse_ensemble_spec(arg: str) -> EnsembleConfig:
    """`DIR` (a folder with ensemble.yaml) or `DIR1,DIR2,...` (reward-model folders), followed by
    any of `,lambda_std=L`, `,min` (which override the folder's own setting) and `,calibration=FILE`
    (measure the offsets on FILE; required for a list of folders) -> absolute member folders."""
    from rlaif.train.reward_combine import check_rm_folder

    where = f"ensemble:{arg}"
    mode, lam, members, saved, calibration = None, None, [], None, None
    for part in (p for p in arg.split(",") if p):
        if part == "min":
            mode = "min"
        elif part.startswith("lambda="):
            raise UserError(f"{where}: field 'lambda': now 'lambda_std=' (it multiplies the standard deviation "
                            "across members, not Coste et al.'s variance)")
        elif part.startswith("lambda_std="):
            try:
                lam = float(part.split("=", 1)[1])
            except ValueError:
                raise UserError(f"{where}: field 'lambda_std': expected a number, got {part!r}") from None
            if lam < 0:
                raise UserError(f"{where}: field 'lambda_std': expected a number >= 0, got {lam}")
        elif part.startswith("calibration="):
            calibration = part.split("=", 1)[1]
            if not Path(calibration).is_file():
                raise UserError(f"{where}: field 'calibration': {calibration} is not a file; expected a JSONL of "
                                "prompt with response, candidates or chosen/rejected")
        elif (Path(part) / "ensemble.yaml").is_file():
            root = Path(part)
            saved = load_config(EnsembleConfig, root / "ensemble.yaml")
            members += [str(Path(m) if Path(m).is_absolute() else root / m) for m in saved.members]
        else:
            members.append(part)
    check_k(len(members), where)
    members = [str(check_rm_folder(m, "members", where)) for m in members]
    offsets = saved.offsets if saved and calibration is None else None
    if offsets is None and calibration is None:
        raise UserError(f"{where}: field 'calibration': missing; each member is centred on one calibration set "
                        "before combining (a Bradley–Terry RM's offset is arbitrary) — add ,calibration=FILE "
                        "(prompt with response, candidates or chosen/rejected)")
    if offsets is not None and len(offsets) != len(members):
        raise UserError(f"{where}: field 'offsets': {len(offsets)} offsets for {len(members)} members in "
                        "ensemble.yaml; add ,calibration=FILE to measure them again")
    return EnsembleConfig(members=members, mode=mode or (saved.mode if saved else "mean-std"),
                          lambda_std=lam if lam is not None else (saved.lambda_std if saved else 1.0),
                          seed=saved.seed if saved else 0, offsets=offsets,
                          calibration=calibration or (saved.calibration if saved else None))


class EnsembleReward:
    """`reward(prompts, responses) -> conservative R` of the centred members; `member_scores` gives
    the raw [K, N] matrix, `offsets` the m_k (from the config, else measured on `cfg.calibration`)."""

    def __init__(self, cfg: EnsembleConfig, device="cpu", batch_size: int = 16, max_length: int = 512,
                 scorers: Sequence | None = None):
        from rlaif.train.reward_model import RewardScorer

        self.cfg = cfg
        self.scorers = list(scorers) if scorers is not None else [
            RewardScorer(m, device=device, batch_size=batch_size, max_length=max_length) for m in cfg.members]
        check_k(len(self.scorers), "ensemble")
        if cfg.offsets is None and not cfg.calibration:
            raise UserError("ensemble: no offsets and no calibration file; set calibration=FILE to centre the members")
        self.offsets = list(cfg.offsets) if cfg.offsets is not None else member_offsets(self.scorers, cfg.calibration)

    def member_scores(self, prompts: Sequence, responses: Sequence[str]) -> torch.Tensor:
        return torch.tensor([[float(s) for s in scorer(prompts, responses)] for scorer in self.scorers],
                            dtype=torch.float64)

    def __call__(self, prompts: Sequence, responses: Sequence[str]) -> list[float]:
        centred = self.member_scores(prompts, responses) - torch.tensor(self.offsets, dtype=torch.float64)[:, None]
        return conservative(centred, self.cfg.mode, self.cfg.lambda_std).tolist()
