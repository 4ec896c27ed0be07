"""The learning experiment shared by tests/train/test_learning.py and benchmarks/learning.py.

Does training learn from the judge's signal, or only from being trained? A test-only rule judge
(tests/support/rule_judge.py) prefers the shorter reply with a known accuracy; its control, the "random"
rule, gives labels of the same confidence whose side carries no length signal. Both go through the
real stages on the embedded policy (SmolLM2-135M-Instruct):

    held-out prompts ──greedy──> mean reply length L₀                          (once)
    training prompts ──responses stage, 2 samples each──> pairs                 (once)
    pairs ──label stage (judge)──> preferences ──DPO──> policy ──greedy──> L₁    (per judge)
    the same preferences ──KTO (chosen desirable, rejected undesirable)──> policy ──greedy──> L₁
    the same preferences ──SimPO / ORPO (no reference)──> policy ──greedy──> L₁
    training prompts ──PPO, reward = judge's direct 1–9 score──> policy ──greedy──> L₁
    training prompts ──GRPO / RLOO, G replies a prompt, the same reward──> policy ──greedy──> L₁

and the effect is Δ = L₁ − L₀ (tokens). The rule arm must shorten the replies by more than the
random arm moves them; a sign error or a masking bug in a trainer turns that around or erases it.
Held-out and training prompts are disjoint parts of the shipped helpful prompt set.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from rule_judge import RuleJudge  # noqa: E402

EMBEDDED = "embedded:smollm2-135m-instruct"
RULES = ("shorter", "random")  # the judge's rule, then its no-signal control
PROMPT_SET = "helpful"
CONSTITUTION = "concise"
# SmolLM2-135M rambles past any short token budget on plain prompts (none of 12 held-out greedy
# replies ended within 96 tokens). With this system turn on every prompt, training and held-out
# alike, 17 of 24 greedy replies end on their own within 48 tokens (mean 35): the length is the
# policy's choice, not the budget's, and training can move it either way.
SYSTEM = "Reply in at most five words."


@dataclass(frozen=True)
class Sizes:
    """Everything that sets the cost and the strength of one run (tuned for a 2-core CPU)."""

    train_prompts: int = 24  # of the 52 helpful prompts; the other 28 are held out
    sample_tokens: int = 64  # responses stage (the pairs DPO learns from)
    sample_temperature: float = 0.7
    eval_tokens: int = 48  # greedy held-out replies
    judge_accuracy: float = 0.9
    dpo_steps: int = 6
    dpo_batch: int = 4
    dpo_lr: float = 2e-5
    dpo_beta: float = 0.1
    # KTO: examples, not pairs (each pair gives a desirable and an undesirable one). Measured on seed 0:
    # 6 steps of 8 at lr 2e-5 moved the rule arm only -9.2 (the control +8.0); 10 steps of 4 at 3e-5
    # (about the same examples, one epoch) -16.6
    kto_steps: int = 10
    kto_batch: int = 4  # at least 2: KTO's KL reference point pairs each prompt with another completion
    kto_lr: float = 3e-5
    kto_beta: float = 0.1
    # the reference-free losses on the DPO preference file, with DPO's steps and batch: SimPO at its
    # paper's scale (β = 2 on per-token means, γ = β/2) and DPO's lr; ORPO with λ = 10 and lr 5e-5
    # (at TRL's λ = 0.1 and DPO's lr the odds-ratio term moved the length by -0.2 tokens: ORPO's SFT
    # term, which imitates the replies whatever the labels, drowned it)
    simpo_beta: float = 2.0
    simpo_gamma: float = 1.0
    orpo_beta: float = 10.0
    orpo_lr: float = 5e-5
    ppo_steps: int = 4
    ppo_batch: int = 8
    ppo_mini_batch: int = 4
    ppo_epochs: int = 2
    ppo_lr: float = 1e-5
    ppo_kl: float = 0.02
    ppo_new_tokens: int = 40
    # GRPO / RLOO: as many prompts per step as PPO's mini-batch, G replies each (16 replies a step,
    # two optimisation passes over each), the same lr, new tokens and KL weight as PPO
    grpo_steps: int = 4
    grpo_batch: int = 4
    grpo_generations: int = 4
    grpo_iterations: int = 2
    grpo_lr: float = 1e-5
    grpo_beta: float = 0.02
    max_length: int = 192


SIZES = Sizes()

# ---------------------------------------------------------------- prompts and the policy


def split_prompts(sizes: Sizes) -> tuple[list[dict], list[dict]]:
    """(training, held-out) prompt records: training takes `train_prompts` of the prompts outside
    every third one (so both halves span the set's categories), held-out is everything else."""
    from rlaif.prompts_io import read_prompts

    records = [{**r, "prompt": [{"role": "system", "content": SYSTEM}, *r["prompt"]]}
               for r in read_prompts(PROMPT_SET)]
    train = [r for i, r in enumerate(records) if i % 3][:sizes.train_prompts]
    chosen = {r["id"] for r in train}
    heldout = [r for r in records if r["id"] not in chosen]
    if len(train) < sizes.train_prompts or len(heldout) < 8:
        raise ValueError(f"{PROMPT_SET}: {len(records)} prompts are too few for {sizes.train_prompts} "
                         "training prompts and 8 or more held out")
    return train, heldout


def write_prompts(records: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps({"id": r["id"], "prompt": r["prompt"]}) + "\n" for r in records))
    return path


def policy_engine(model: str | Path = EMBEDDED):
    """The transformers engine on CPU in float32: the embedded policy or a trained output dir."""
    from rlaif.backends import load_engine
    from rlaif.config import EngineConfig

    return load_engine(EngineConfig(model=str(model), device="cpu", dtype="float32", batch_size=32))


def mean_reply_tokens(model: str | Path, prompts: list[dict], max_tokens: int) -> float:
    """Mean length in tokens (EOS excluded) of the policy's greedy replies to `prompts`."""
    from rlaif.backends.base import GenerationRequest

    engine = policy_engine(model)
    try:
        done = engine.generate([GenerationRequest(p["prompt"], temperature=0.0, max_tokens=max_tokens)
                                for p in prompts])
    finally:
        engine.close()
    return sum(c.completion_tokens for c in done) / len(done)


# ---------------------------------------------------------------- data from the stages


def sample_pairs(prompts: list[dict], sizes: Sizes, seed: int, out_dir: Path) -> Path:
    """The responses stage (2 samples per prompt from the policy) -> an unordered pairs file.

    A pair whose two replies were both cut off by the token budget is left out: their lengths are
    the budget's, not the policy's, so no judge of length could tell them apart."""
    from rlaif.runner import run_stage
    from rlaif.stages.responses import ResponsesConfig, expand, make_process

    cfg = ResponsesConfig(n=2, max_tokens=sizes.sample_tokens, temperature=sizes.sample_temperature, seed=seed)
    engine = policy_engine()
    try:
        result = run_stage("responses", expand(prompts, engine.model, cfg), make_process(engine, cfg),
                           out_dir / "responses", config=cfg, batch_size=32, progress=False)
    finally:
        engine.close()
    by_prompt: dict[str, list[dict]] = {}
    for r in result.records:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    pairs = []
    for group in by_prompt.values():
        a, b = sorted(group, key=lambda r: r["sample"])
        cut = a["finish_reason"] == b["finish_reason"] == "length"
        if a["response"].strip() != b["response"].strip() and not cut:
            pairs.append({"prompt": a["prompt"], "response_a": a["response"], "response_b": b["response"]})
    path = out_dir / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return path


def judge(rule: str, sizes: Sizes, seed: int) -> RuleJudge:
    return RuleJudge(rule, accuracy=sizes.judge_accuracy, seed=seed)


def label(pairs: Path, rule: str, sizes: Sizes, seed: int, out_dir: Path) -> Path:
    """The label stage with the rule judge -> preferences.jsonl. One order per pair (no position
    debiasing: the rule judge has no position bias), so both rules give every pair the same
    confidence and differ only in which side wins."""
    from rlaif.judge import Judge, JudgeConfig
    from rlaif.stages.labeler import run_label

    run_label(pairs, Judge(judge(rule, sizes, seed), CONSTITUTION, JudgeConfig(debias=False, seed=seed)), out_dir,
              progress=False)
    return out_dir / "preferences.jsonl"


def shorter_chosen_rate(prefs: Path) -> float:
    """Fraction of labelled pairs (ties left out) whose chosen reply has fewer words."""
    from rlaif.records import read_jsonl

    wins = []
    for r in read_jsonl(prefs):
        c, j = (len(r[k][0]["content"].split()) for k in ("chosen", "rejected"))
        if c != j:
            wins.append(c < j)
    return sum(wins) / max(len(wins), 1)


# ---------------------------------------------------------------- the trainers


def run_dpo(prefs: Path, sizes: Sizes, seed: int, out_dir: Path) -> dict:
    from rlaif.train.dpo import DPOConfig, train_dpo

    return train_dpo(DPOConfig(policy=EMBEDDED, prefs=str(prefs), output_dir=str(out_dir), seed=seed,
                               max_steps=sizes.dpo_steps, batch_size=sizes.dpo_batch,
                               eval_batch_size=sizes.dpo_batch, learning_rate=sizes.dpo_lr,
                               beta=sizes.dpo_beta, max_length=sizes.max_length, progress=False))


def run_simpo(prefs: Path, sizes: Sizes, seed: int, out_dir: Path) -> dict:
    """SimPO (`rlaif dpo --loss simpo`) on the DPO preference file: no reference."""
    from rlaif.train.dpo import DPOConfig, train_dpo

    return train_dpo(DPOConfig(policy=EMBEDDED, prefs=str(prefs), output_dir=str(out_dir), seed=seed, loss="simpo",
                               max_steps=sizes.dpo_steps, batch_size=sizes.dpo_batch,
                               eval_batch_size=sizes.dpo_batch, learning_rate=sizes.dpo_lr,
                               beta=sizes.simpo_beta, simpo_gamma=sizes.simpo_gamma, max_length=sizes.max_length,
                               progress=False))


def run_orpo(prefs: Path, sizes: Sizes, seed: int, out_dir: Path) -> dict:
    """ORPO (`rlaif orpo`) on the DPO preference file: SFT on the (p-weighted) replies + odds ratio."""
    from rlaif.train.orpo import ORPOConfig, train_orpo

    return train_orpo(ORPOConfig(policy=EMBEDDED, prefs=str(prefs), output_dir=str(out_dir), seed=seed,
                                 max_steps=sizes.dpo_steps, batch_size=sizes.dpo_batch,
                                 eval_batch_size=sizes.dpo_batch, learning_rate=sizes.orpo_lr,
                                 beta=sizes.orpo_beta, max_length=sizes.max_length, progress=False))


def run_kto(prefs: Path, sizes: Sizes, seed: int, out_dir: Path) -> dict:
    """KTO on the DPO preference file, unpaired: each pair's chosen reply desirable, its rejected
    reply undesirable (data_format "pairs")."""
    from rlaif.train.kto import KTOConfig, train_kto

    return train_kto(KTOConfig(policy=EMBEDDED, data=str(prefs), data_format="pairs", output_dir=str(out_dir),
                               seed=seed, max_steps=sizes.kto_steps, batch_size=sizes.kto_batch,
                               eval_batch_size=sizes.kto_batch, learning_rate=sizes.kto_lr,
                               beta=sizes.kto_beta, max_length=sizes.max_length, progress=False))


def direct_reward(rule: str, sizes: Sizes, seed: int):
    """Direct RLAIF: the judge's probability-weighted 1–9 score of each reply, in [0, 1]."""
    from rlaif.judge import Judge
    from rlaif.train.rewards import direct_reward as judge_reward

    return judge_reward(Judge(judge(rule, sizes, seed), CONSTITUTION))


def run_ppo(prompts: Path, rule: str, sizes: Sizes, seed: int, out_dir: Path) -> dict:
    from rlaif.train.ppo import PPOConfig, train_ppo

    cfg = PPOConfig(policy=EMBEDDED, prompts=str(prompts), output_dir=str(out_dir), seed=seed,
                    max_steps=sizes.ppo_steps, batch_size=sizes.ppo_batch, mini_batch_size=sizes.ppo_mini_batch,
                    ppo_epochs=sizes.ppo_epochs, learning_rate=sizes.ppo_lr, kl_coef=sizes.ppo_kl,
                    max_new_tokens=sizes.ppo_new_tokens, max_length=sizes.max_length, progress=False)
    return train_ppo(cfg, reward_fn=direct_reward(rule, sizes, seed))


def run_grpo(prompts: Path, rule: str, sizes: Sizes, seed: int, out_dir: Path, advantage: str = "grpo") -> dict:
    """GRPO (`advantage: grpo`) or RLOO (`rloo`) with the judge's direct score as the one reward,
    through the trainer's own judge reward (rlaif/train/rewards.py JudgeReward)."""
    from rlaif.judge import Judge
    from rlaif.train.grpo import GRPOConfig
    from rlaif.train.grpo_loop import train_grpo
    from rlaif.train.rewards import JudgeReward, RewardSet

    cfg = GRPOConfig(policy=EMBEDDED, prompts=str(prompts), output_dir=str(out_dir), seed=seed,
                     max_steps=sizes.grpo_steps, batch_size=sizes.grpo_batch, num_generations=sizes.grpo_generations,
                     num_iterations=sizes.grpo_iterations, advantage=advantage, learning_rate=sizes.grpo_lr,
                     beta=sizes.grpo_beta, max_new_tokens=sizes.ppo_new_tokens, max_length=sizes.max_length,
                     progress=False)
    reward = RewardSet([JudgeReward("judge_direct", 1.0, Judge(judge(rule, sizes, seed), CONSTITUTION), "direct")])
    return train_grpo(cfg, reward_fn=reward)


# ---------------------------------------------------------------- one experiment


@dataclass
class Effect:
    trainer: str
    rule: str
    seed: int
    before: float  # mean greedy reply tokens on held-out prompts, starting policy
    after: float  # the same, trained policy

    @property
    def delta(self) -> float:
        return self.after - self.before

    def row(self) -> dict:
        return {**asdict(self), "delta": round(self.delta, 3)}


class Experiment:
    """Shared artefacts (prompt split, the starting policy's held-out length, sampled pairs per
    seed) and the arms: `dpo(rule, seed)`, `kto(rule, seed)`, `ppo(rule, seed)`, `grpo(rule, seed)`,
    `rloo(rule, seed)` -> Effect."""

    def __init__(self, work: Path, sizes: Sizes = SIZES):
        self.work, self.sizes = Path(work), sizes
        self.work.mkdir(parents=True, exist_ok=True)
        self.train, self.heldout = split_prompts(sizes)
        self.train_file = write_prompts(self.train, self.work / "train_prompts.jsonl")
        self._before: float | None = None
        self._pairs: dict[int, Path] = {}

    @property
    def before(self) -> float:
        if self._before is None:
            self._before = mean_reply_tokens(EMBEDDED, self.heldout, self.sizes.eval_tokens)
        return self._before

    def pairs(self, seed: int) -> Path:
        if seed not in self._pairs:
            self._pairs[seed] = sample_pairs(self.train, self.sizes, seed, self.work / f"seed{seed}")
        return self._pairs[seed]

    def after(self, model_dir: Path) -> float:
        """The trained policy's held-out length; its weights (540 MB) are deleted once measured."""
        length = mean_reply_tokens(model_dir, self.heldout, self.sizes.eval_tokens)
        (Path(model_dir) / "model.safetensors").unlink()
        return length

    def preferences(self, rule: str, seed: int) -> Path:
        """The seed's pairs labelled by the judge (the label stage resumes: a second call is free)."""
        return label(self.pairs(seed), rule, self.sizes, seed, self.work / f"seed{seed}" / f"label-{rule}")

    def dpo(self, rule: str, seed: int) -> Effect:
        out = self.work / f"seed{seed}" / f"dpo-{rule}"
        run_dpo(self.preferences(rule, seed), self.sizes, seed, out)
        return Effect("dpo", rule, seed, self.before, self.after(out))

    def simpo(self, rule: str, seed: int) -> Effect:
        out = self.work / f"seed{seed}" / f"simpo-{rule}"
        run_simpo(self.preferences(rule, seed), self.sizes, seed, out)
        return Effect("simpo", rule, seed, self.before, self.after(out))

    def orpo(self, rule: str, seed: int) -> Effect:
        out = self.work / f"seed{seed}" / f"orpo-{rule}"
        run_orpo(self.preferences(rule, seed), self.sizes, seed, out)
        return Effect("orpo", rule, seed, self.before, self.after(out))

    def kto(self, rule: str, seed: int) -> Effect:
        out = self.work / f"seed{seed}" / f"kto-{rule}"
        run_kto(self.preferences(rule, seed), self.sizes, seed, out)
        return Effect("kto", rule, seed, self.before, self.after(out))

    def ppo(self, rule: str, seed: int) -> Effect:
        out = self.work / f"seed{seed}" / f"ppo-{rule}" / "model"
        run_ppo(self.train_file, rule, self.sizes, seed, out)
        return Effect("ppo", rule, seed, self.before, self.after(out))

    def grpo(self, rule: str, seed: int, advantage: str = "grpo") -> Effect:
        out = self.work / f"seed{seed}" / f"{advantage}-{rule}" / "model"
        run_grpo(self.train_file, rule, self.sizes, seed, out, advantage)
        return Effect(advantage, rule, seed, self.before, self.after(out))

    def rloo(self, rule: str, seed: int) -> Effect:
        return self.grpo(rule, seed, "rloo")
