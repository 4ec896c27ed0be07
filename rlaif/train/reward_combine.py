"""Two reward models combined the Llama 2 way: a helpful RM and a harmless RM, each trained by
`rlaif train-rm` on the labels of its own constitution, and one reward that picks between them.

Each RM's raw score r is first whitened with statistics measured once, on a calibration set of
prompt/response pairs, and stored in the combination file:

    z = (r − μ) / σ          (μ, σ: mean and standard deviation of that RM on the calibration set)

so the two scales are comparable and the threshold below is in standard deviations. Then, for a
prompt x and a response y,

    R(x, y) = z_harmless(x, y)   if x is flagged unsafe, or z_harmless(x, y) < T
              z_helpful(x, y)    otherwise

(Touvron et al. 2023, §3.2.2: the safety RM decides on unsafe prompts and on responses it scores
low; the helpfulness RM everywhere else). At exactly z_harmless = T the helpful score is used. The
default T = −1 takes the harmless score for responses about one standard deviation worse than a
typical calibration response. Llama 2 thresholded the safety RM's sigmoid score at 0.15 and
whitened the combined score's logit; whitening each RM before the choice keeps the two branches on
one scale, which is what a PPO reward needs.

A prompt is flagged unsafe by its record in the prompt file (PPO's or best-of-N's prompts, or
`unsafe_prompts` in the combination file): a true `unsafe` field (`unsafe_field`), or a `category`
field (`category_field`) naming one of `unsafe_categories`.

The combination is a YAML file written by `rlaif combine-rm` (which measures μ and σ); use it as
`--reward combined:FILE.yaml` in `rlaif ppo`, `rlaif best-of-n` and `rlaif rs-ft`. Relative RM
paths in the file are read from the file's folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from pydantic import Field

from rlaif.config import Strict, load_config
from rlaif.errors import UserError
from rlaif.records import read_jsonl

SIDES = ("helpful", "harmless")


class Whitening(Strict):
    mean: float
    std: float = Field(gt=0)
    n: int = Field(ge=2)


class CombineConfig(Strict):
    helpful: str  # reward-model folder (train-rm output)
    harmless: str
    threshold: float = Field(-1.0, description="T, on the whitened harmless score")
    helpful_whitening: Whitening
    harmless_whitening: Whitening
    unsafe_field: str = "unsafe"
    category_field: str = "category"
    unsafe_categories: list[str] = []
    unsafe_prompts: str | None = Field(None, description="optional prompt file whose flagged records count as unsafe")
    calibration: str | None = Field(None, description="where the statistics came from (for the record)")
    max_length: int = Field(512, ge=8)


# ---------------------------------------------------------------- the rule


def whiten(scores: Sequence[float], w: Whitening) -> list[float]:
    return [(s - w.mean) / w.std for s in scores]


def combine(z_helpful: Sequence[float], z_harmless: Sequence[float], unsafe: Sequence[bool],
            threshold: float) -> tuple[list[float], list[str]]:
    """-> (R, which RM gave each R): harmless when unsafe or z_harmless < T, else helpful."""
    out, used = [], []
    for h, s, flag in zip(z_helpful, z_harmless, unsafe, strict=True):
        pick = "harmless" if flag or s < threshold else "helpful"
        out.append(s if pick == "harmless" else h)
        used.append(pick)
    return out, used


def whitening_of(scores: Sequence[float], where: str) -> Whitening:
    """Mean and (unbiased) standard deviation of one RM's calibration scores."""
    n = len(scores)
    if n < 2:
        raise UserError(f"{where}: {n} calibration responses; need at least 2 to measure a standard deviation")
    mean = sum(scores) / n
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1))
    if not std > 0:
        raise UserError(f"{where}: every calibration response gets the same score ({mean:.6g}); "
                        "the scores cannot be whitened — use more varied responses")
    return Whitening(mean=mean, std=std, n=n)


def prompt_key(messages) -> str:
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


def is_flagged(meta: dict, cfg: CombineConfig) -> bool:
    if meta.get(cfg.unsafe_field) is True:
        return True
    return cfg.category_field in meta and meta[cfg.category_field] in cfg.unsafe_categories


# ---------------------------------------------------------------- calibration data


def calibration_pairs(path: str | Path) -> tuple[list, list[str]]:
    """(prompts, responses) from JSONL records with `prompt` and `candidates` or `responses` (lists,
    e.g. best_of_n.jsonl), `response` (a string), or `chosen`/`rejected` (both sides count). A list
    wins over `response`: in a best-of-N record `response` is only the best candidate, and whitening
    on it would measure the max-of-N's mean and spread, not a typical reply's."""
    from rlaif.prompts_io import as_messages

    prompts, texts = [], []
    for i, rec in enumerate(read_jsonl(path), 1):
        where = f"{path}:{i}"
        if "prompt" not in rec:
            raise UserError(f"{where}: missing field 'prompt'; expected prompt plus response, candidates or "
                            "chosen/rejected")
        prompt = as_messages(rec["prompt"], where)
        listed = rec.get("candidates", rec.get("responses"))
        if isinstance(listed, list):
            found = listed
        elif isinstance(rec.get("response"), str):
            found = [rec["response"]]
        elif "chosen" in rec and "rejected" in rec:
            found = [_text(rec[k], where, k) for k in ("chosen", "rejected")]
        else:
            raise UserError(f"{where}: no 'response' (text), 'candidates' (list) or 'chosen'/'rejected' field")
        for t in found:
            if not isinstance(t, str):
                raise UserError(f"{where}: expected response texts, got {type(t).__name__}")
            prompts.append(prompt)
            texts.append(t)
    return prompts, texts


def _text(value, where: str, field: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                 for m in value):
        return "".join(m["content"] for m in value)
    raise UserError(f"{where}: field {field!r}: expected text or assistant messages")


def check_rm_folder(path: str | Path, field: str, where: str) -> Path:
    p = Path(path)
    if not (p.is_dir() and (p / "config.json").is_file()):
        raise UserError(f"{where}: field {field!r}: {p} is not a reward-model folder (a train-rm output "
                        "with config.json); expected an existing folder")
    return p


# ---------------------------------------------------------------- building and loading


def build_combination(helpful: str, harmless: str, calibration: str, out: str | Path, *,
                      threshold: float = -1.0, unsafe_categories: Sequence[str] = (),
                      unsafe_prompts: str | None = None, device: str = "cpu", batch_size: int = 16,
                      max_length: int = 512) -> CombineConfig:
    """Score the calibration set with both RMs, store their whitening statistics with the rule."""
    from rlaif.records import write_atomic
    from rlaif.train.reward_model import RewardScorer

    import yaml

    dirs = {"helpful": check_rm_folder(helpful, "helpful", "--helpful"),
            "harmless": check_rm_folder(harmless, "harmless", "--harmless")}
    prompts, texts = calibration_pairs(calibration)
    stats = {}
    for side in SIDES:
        scorer = RewardScorer(str(dirs[side]), device=device, batch_size=batch_size, max_length=max_length)
        stats[side] = whitening_of(scorer(prompts, texts), f"{calibration} ({side} RM)")
        del scorer
    cfg = CombineConfig(helpful=str(dirs["helpful"].resolve()), harmless=str(dirs["harmless"].resolve()),
                        threshold=threshold, helpful_whitening=stats["helpful"],
                        harmless_whitening=stats["harmless"], unsafe_categories=list(unsafe_categories),
                        unsafe_prompts=_absolute_if_file(unsafe_prompts), calibration=str(calibration),
                        max_length=max_length)
    write_atomic(Path(out), yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    return cfg


def _absolute_if_file(p: str | None) -> str | None:
    """A prompt file given on the command line, made absolute so the combination file can move;
    a shipped prompt-set name (no such file here) is kept as it is."""
    return str(Path(p).resolve()) if p and Path(p).exists() else p


def _unsafe_prompts_beside(value: str, path: Path) -> str:
    """`unsafe_prompts` read relative to the combination file's folder (a shipped prompt-set name,
    e.g. `harmful_demo`, still works); not the working directory."""
    p = Path(value)
    if p.is_absolute():
        return value
    if (path.parent / p).exists():
        return str(path.parent / p)
    from rlaif.resources import resource_dir

    if p.name == value:
        shipped = sorted(q for q in resource_dir("prompts").iterdir() if q.is_file() and value in (q.name, q.stem))
        if shipped:
            return str(shipped[0])
    raise UserError(f"{path}: field 'unsafe_prompts': {value} not found beside the combination file "
                    f"({path.parent / p}); relative paths are read from the file's folder")


def load_combination(path: str | Path) -> CombineConfig:
    """The combination file, with RM paths and `unsafe_prompts` made absolute (relative to the
    file) and checked."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"combined:{path}: no such combination file; write one with `rlaif combine-rm`")
    cfg = load_config(CombineConfig, path)
    update = {}
    for side in SIDES:
        p = Path(getattr(cfg, side))
        p = p if p.is_absolute() else path.parent / p
        update[side] = str(check_rm_folder(p, side, str(path)))
    if cfg.unsafe_prompts:
        update["unsafe_prompts"] = _unsafe_prompts_beside(cfg.unsafe_prompts, path)
    return cfg.model_copy(update=update)


class CombinedReward:
    """`reward(prompts, responses) -> R` by the rule above. `flag_prompts(records)` marks the
    unsafe prompts of a prompt file (records as `rlaif.prompts_io.read_prompts` gives them)."""

    def __init__(self, cfg: CombineConfig, device="cpu", batch_size: int = 16, scorers: dict | None = None):
        from rlaif.train.reward_model import RewardScorer

        self.cfg = cfg
        self.scorers = scorers or {side: RewardScorer(getattr(cfg, side), device=device, batch_size=batch_size,
                                                      max_length=cfg.max_length) for side in SIDES}
        self.unsafe: set[str] = set()
        if cfg.unsafe_prompts:
            from rlaif.prompts_io import read_prompts

            self.flag_prompts(read_prompts(cfg.unsafe_prompts))

    def flag_prompts(self, records: Sequence[dict]) -> int:
        """Remember the flagged prompts among `records` ({prompt, meta}); -> how many were flagged."""
        flagged = [prompt_key(r["prompt"]) for r in records if is_flagged(r.get("meta", {}), self.cfg)]
        self.unsafe.update(flagged)
        return len(flagged)

    def explain(self, prompts: Sequence, responses: Sequence[str]) -> list[dict]:
        """Per response: raw and whitened scores of both RMs, the flag, which RM decided, and R."""
        raw = {side: [float(s) for s in self.scorers[side](prompts, responses)] for side in SIDES}
        z = {side: whiten(raw[side], getattr(self.cfg, f"{side}_whitening")) for side in SIDES}
        flags = [prompt_key(p) in self.unsafe for p in prompts]
        reward, used = combine(z["helpful"], z["harmless"], flags, self.cfg.threshold)
        return [{"reward": r, "used": u, "unsafe_prompt": f, "helpful_raw": rh, "harmless_raw": rs,
                 "helpful_z": zh, "harmless_z": zs}
                for r, u, f, rh, rs, zh, zs in zip(reward, used, flags, raw["helpful"], raw["harmless"],
                                                   z["helpful"], z["harmless"])]

    def __call__(self, prompts: Sequence, responses: Sequence[str]) -> list[float]:
        return [row["reward"] for row in self.explain(prompts, responses)]
