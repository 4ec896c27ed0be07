"""A pipeline file's schema and its checks at load time: the roles' engine blocks, the prompt set,
a block per stage, `rounds:` and `executor:` (`PipelineConfig`); `load_pipeline` reads and checks
one (training blocks, the policy being trainable, enough held-out prompts) before any work.
Running one: rlaif/pipeline.py."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from rlaif.config import (EngineConfig, ExecutorConfig, Strict, apply_overrides, engine_field_problem,
                          not_applying, read_yaml, validate)
from rlaif.errors import UserError
from rlaif.prompts_io import held_out_prompts
from rlaif.roles import check_trainable, resolve_roles
from rlaif.stages.critique_revision import CritiqueConfig
from rlaif.judge import AuditGates
from rlaif.stages.labeler import LabelConfig
from rlaif.stages.rate import RateConfig
from rlaif.stages.responses import ResponsesConfig
from rlaif.train.dpo import DPOConfig
from rlaif.train.grpo import GRPOConfig
from rlaif.train.ppo import PPOConfig
from rlaif.train.reward_model import RewardConfig
from rlaif.train.sft import SFTConfig

# ---------------------------------------------------------------- rounds: (run by rlaif/iterate.py)


class RoundsEval(Strict):
    """How each round's policy is measured, on held-out prompts (never training prompts)."""

    policy_prompts: int = Field(8, ge=1)  # held-out prompts
    prompts: str | None = None  # their own prompt file; None: the training file after the training prompts
    samples: int = Field(2, ge=1)  # samples per held-out prompt (temperature 1) for KL and the rewards
    max_tokens: int = Field(48, ge=1)
    independent_judge: EngineConfig | None = None  # a second judge's direct score, next to the proxy
    rank: bool = True  # rank start and every round's policy (round robin, debiased, greedy replies)
    bootstrap: int = Field(1000, ge=100)


class RoundsConfig(Strict):
    count: int = Field(ge=1)  # rounds
    prompts_per_round: int = Field(8, ge=1)
    fresh_prompts: bool = True  # False: the same prompts every round
    samples: int = Field(4, ge=2)  # N per prompt
    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.9, gt=0)
    pairing: Literal["best_worst", "all_pairs", "soft_pairs"] = "best_worst"
    trainer: Literal["dpo", "ipo", "kto"] = "dpo"
    reference: Literal["previous", "start"] = "previous"
    train: dict = {}  # DPOConfig / KTOConfig fields (output_dir, prefs/data, policy, reference are set here)
    eval: RoundsEval = RoundsEval()


def trainer(rounds: RoundsConfig, source: str = "rounds"):
    """(config class, train function, config block) of the rounds' trainer: `rounds.train` as the
    trainer's config, with the loss (DPO / IPO) or the data shape (KTO on the pairs' sides) the
    recipe implies; a bad field is one UserError naming `source`."""
    if rounds.trainer == "kto":
        from rlaif.train.kto import KTOConfig, train_kto

        cls, fn, fixed = KTOConfig, train_kto, {"data_format": "pairs"}
    else:
        from rlaif.train.dpo import DPOConfig, train_dpo

        cls, fn, fixed = DPOConfig, train_dpo, {"loss": "ipo" if rounds.trainer == "ipo" else "sigmoid"}
    return cls, fn, validate(cls, {**rounds.train, **fixed}, f"{source}: rounds.train")


def check_rounds(cfg, source: str) -> None:
    """Before any work: the trainer block validates and there are prompts for every round."""
    from rlaif.prompts_io import read_prompts

    rounds = cfg.rounds
    trainer(rounds, source)
    pool = read_prompts(cfg.prompts.file)[: cfg.prompts.limit]
    need = rounds.prompts_per_round * (rounds.count if rounds.fresh_prompts else 1)
    if len(pool) < need:
        raise UserError(f"{source}: rounds needs {need} training prompts ({rounds.count} rounds × "
                        f"{rounds.prompts_per_round}{' fresh' if rounds.fresh_prompts else ''}), but "
                        f"{cfg.prompts.file} gives {len(pool)} (prompts.limit {cfg.prompts.limit}); lower "
                        "rounds.prompts_per_round or raise prompts.limit")


# ---------------------------------------------------------------- the pipeline file


class PromptSet(Strict):
    file: str = "red_team"
    limit: int | None = Field(None, ge=1)


class LabelStage(LabelConfig):
    """The label stage's block: how the run's judge asks (every use of the judge in the run follows
    its judge fields), the margin rule, and which pairs are labeled."""

    pairs: list[Literal["revisions", "samples"]] = ["revisions", "samples"]
    compare_constitution: str | None = None  # label the same pairs again under this one and compare


class RateStage(RateConfig):
    """The rate stage's block (rlaif/stages/rate.py): the responses stage's K samples per prompt rated
    on the aspects, binarised into rate/preferences.jsonl (what dpo trains on when there is no label
    stage) and ranked into rate/rankings.jsonl (what reward_model trains on, k-wise). Its seed is
    the pipeline's."""


# A training stage's block is the trainer's own config (validated when the pipeline loads, a bad field
# named as stages.NAME.FIELD). The fields the pipeline fills in itself are set here by the pipeline
# (Pipeline.train): output_dir, the data (prefs, data, prompts), the start model (policy, base), seed and
# the policy's system prompt; ppo's and grpo's judge (the judge role) and constitution (the run's, unless
# the block names one), ppo's reward ("rm" or unset: this run's reward model).
PIPELINE_FILLS = ("output_dir", "prefs", "data", "prompts", "policy", "base", "seed", "system_prompt")


class EvaluateStage(Strict):
    human: str | None = "auto"  # HH-RLHF file; "auto": ../shared/data/hh-rlhf/... when present
    human_limit: int = Field(40, ge=1)
    policy_prompts: int = Field(8, ge=1)  # held-out prompts for win/harmless rate
    # where they come from: a prompt file of their own, or (None) the prompts after the first
    # prompts.limit of the training file; either way they never overlap the training prompts
    prompts: str | None = None
    max_tokens: int = Field(64, ge=1)
    harmless_constitution: str = "harmless"


class RejectionSamplingStage(Strict):
    reward: str = "rm"  # "rm" (this run's reward model), "labeler:direct" (the judge), or any reward spec
    n: int = Field(4, ge=2)  # samples per prompt
    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.8, gt=0)
    sft: SFTConfig = SFTConfig()  # the fine-tuning on the kept samples


class Stages(Strict):
    responses: ResponsesConfig | None = None
    critique: CritiqueConfig | None = None
    sft: SFTConfig | None = None  # SL-CAI on critique/sl_cai.jsonl
    label: LabelStage | None = None
    rate: RateStage | None = None  # UltraFeedback-style ratings of the K samples per prompt
    reward_model: RewardConfig | None = None
    rejection_sampling: RejectionSamplingStage | None = None  # best-of-K then SFT, before DPO/PPO
    dpo: DPOConfig | None = None
    ppo: PPOConfig | None = None  # reward: "rm" (this run's RM, the default) or "labeler:direct", or any reward spec
    grpo: GRPOConfig | None = None  # judge rewards use the judge role; a model reward's spec "rm" is this run's RM
    evaluate: EvaluateStage | None = None


class JudgeCheckStage(Strict):
    """The judge on the constitution's unambiguous check pairs, before any labeling."""

    enabled: bool = True
    require_accuracy: float | None = Field(None, gt=0.5, le=1)  # below it the run stops (exit 2)


class JudgeAuditStage(AuditGates):
    """The judge audit before labeling or RL (rlaif/judge/audit.py): its gates stop the run with exit
    code 1 and one line."""

    pairs: str | None = None  # a pairs file; default the constitution's check pairs
    self_pairs: str | None = None  # JSONL prompt, own, other, p_reference: the self-preference probe


class PipelineConfig(Strict):
    name: str
    description: str = ""
    seed: int = 0
    policy: EngineConfig | None = None
    critic: EngineConfig | None = None  # default: the policy
    judge: EngineConfig | None = None  # default: the policy (the report says so)
    engine: EngineConfig | None = None  # older pipelines: one block for every role without its own
    judge_check: JudgeCheckStage = JudgeCheckStage()
    judge_audit: JudgeAuditStage | None = None  # probes and gates, after the judge check
    constitution: str = "harmless"
    prompts: PromptSet = PromptSet()
    stages: Stages = Stages()
    rounds: RoundsConfig | None = None  # iterative RLAIF (rlaif/iterate.py), after the other training stages
    executor: ExecutorConfig = ExecutorConfig()  # kind: ray runs responses, critique and label on Ray actors


def resolve_pipeline(path_or_name: str) -> Path:
    path = Path(path_or_name)
    if path.exists():
        return path
    shipped = Path(__file__).resolve().parent.parent / "pipelines" / f"{path_or_name}.yaml"
    if shipped.is_file():
        return shipped
    raise UserError(f"{path_or_name}: pipeline file not found")


def load_pipeline(path_or_name: str, overrides: list[str] | None = None,
                  constitution: str | None = None, roles: dict | None = None) -> tuple[Path, PipelineConfig]:
    """`roles`: role -> model spec (`[kind:]model`) replacing the model of the file's block for that
    role; the block's other settings stay (the CLI's --policy/--critic/--judge)."""
    from rlaif.config import parse_model_spec

    path = resolve_pipeline(path_or_name)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a YAML mapping at the top level, got {type(data).__name__}")
    for role, spec in (roles or {}).items():  # --judge openai:X over a transformers block, before --set
        block = data.get(role)
        if isinstance(block, dict) and "kind" in block:
            new = parse_model_spec(spec)
            if ":" in spec and new.kind != block["kind"]:
                data[role] = {k: v for k, v in block.items() if k not in not_applying(new.kind)} | {
                    "kind": new.kind, "model": new.model}
    cfg = validate(PipelineConfig, apply_overrides(data, overrides), str(path))
    if constitution:
        cfg = cfg.model_copy(update={"constitution": constitution})
    if roles:  # --policy/--critic/--judge first: a --set on the role's block is checked against its final engine
        current, _ = resolve_roles(cfg.policy, cfg.critic, cfg.judge, cfg.engine)
        cfg = cfg.model_copy(update={role: parse_model_spec(spec, current[role])
                                     for role, spec in roles.items()})
    # an engine block that names its kind was checked as it loaded; one that does not runs on transformers
    blocks = {role: getattr(cfg, role) for role in ("policy", "critic", "judge", "engine")}
    if cfg.rounds is not None:
        blocks["rounds.eval.independent_judge"] = cfg.rounds.eval.independent_judge
    for where, block in blocks.items():
        problem = block is not None and engine_field_problem(block)
        if problem:
            raise UserError(f"{path}: field {where}: {problem}")
    if cfg.executor.base_urls:
        kinds = {role: e.kind for role, e in resolve_roles(cfg.policy, cfg.critic, cfg.judge, cfg.engine)[0].items()}
        if "openai" not in kinds.values():
            raise UserError(f"{path}: executor.base_urls is a fleet of OpenAI-compatible servers, but no role runs "
                            f"on an openai engine ({', '.join(f'{r}: {k}' for r, k in kinds.items())})")
    s = cfg.stages  # the training blocks are their trainers' configs: checked as the file loaded
    if s.rejection_sampling is not None:
        if s.rejection_sampling.reward == "rm" and s.reward_model is None:
            raise UserError(f"{path}: stages.rejection_sampling.reward is 'rm' but the pipeline has no "
                            "stages.reward_model")
    if s.ppo is not None and ppo_reward(s.ppo) == "rm" and s.reward_model is None:
        raise UserError(f"{path}: stages.ppo.reward is 'rm' but the pipeline has no stages.reward_model")
    if s.grpo is not None and s.reward_model is None and any(
            r.kind == "model" and r.spec == "rm" for r in s.grpo.rewards):
        raise UserError(f"{path}: stages.grpo.rewards has a model reward with spec 'rm' but the pipeline has no "
                        "stages.reward_model")
    if s.rate is not None and (s.responses is None or s.responses.n < 2):
        raise UserError(f"{path}: stages.rate rates the responses stage's samples and needs two or more per "
                        "prompt; set stages.responses.n: 2 or more")
    if s.rate is not None and s.label is not None and (s.dpo is not None or s.reward_model is not None):
        raise UserError(f"{path}: stages.label and stages.rate both make preferences; keep one of them for "
                        "the training stages to read")
    if s.sft is not None and s.critique is None:
        raise UserError(f"{path}: stages.sft trains on the critique stage's revisions, but the pipeline has no "
                        "stages.critique")
    roles, _ = resolve_roles(cfg.policy, cfg.critic, cfg.judge, cfg.engine)
    if cfg.rounds is not None or any(getattr(s, n) is not None
                                     for n in ("sft", "reward_model", "rejection_sampling", "dpo", "ppo", "grpo")):
        check_trainable(roles["policy"], str(path))
    if s.evaluate is not None and (s.dpo is not None or s.ppo is not None or s.grpo is not None):
        held_out_prompts(cfg, str(path))  # not enough held-out prompts: say so before any work
    if cfg.rounds is not None:
        check_rounds(cfg, str(path))
        held_out_prompts(cfg, str(path), cfg.rounds.eval)
    return path, cfg


def uses_judge(cfg: PipelineConfig) -> bool:
    s = cfg.stages
    return bool(cfg.rounds or s.label or s.rate or s.evaluate or (s.ppo and s.ppo.reward == "labeler:direct")
                or (s.rejection_sampling and s.rejection_sampling.reward == "labeler:direct")
                or (s.grpo is not None and grpo_uses_judge(s.grpo)))


def ppo_reward(block: PPOConfig) -> str:
    """The ppo stage's reward: the block's, or "rm" (this run's reward model) when it names none."""
    return block.reward or "rm"


def grpo_uses_judge(block: GRPOConfig) -> bool:
    """Whether a grpo stage block has a judge reward (the default rewards are the judge's direct score)."""
    return any(r.kind in ("judge_direct", "judge_pairwise") for r in block.rewards)
