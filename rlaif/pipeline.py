"""`rlaif run PIPELINE.yaml`: compose the stages a pipeline file names, each into OUT/<stage>/.

A pipeline is data: which prompts, which engine serves each role (policy, critic, judge; see
rlaif/roles.py), which constitution, a config block per stage. The stages, in order (each optional):

    judge_check -> responses -> critique -> sft -> label | rate -> reward_model -> rejection_sampling
        -> dpo | ppo | grpo -> rounds -> evaluate -> report

`rounds:` (rlaif/iterate.py) is iterative RLAIF: K rounds of sampling from the current policy,
judging, and DPO/IPO/KTO from it, each round in OUT/rounds/round_k/, then every checkpoint ranked.

With an `sft` stage (SL-CAI: the policy fine-tuned on the critique stage's final revisions), DPO
and PPO start from the SL-CAI model, which is also their reference, as in Constitutional AI. A
`rejection_sampling` stage (Llama 2: best of K samples by a reward, then SFT on them) fine-tunes that
model once more, and DPO/PPO start from (and keep as reference) the result.

The pipeline builds each role's engine once and hands every stage the one it needs; no stage picks
its own. The judge check runs first whenever a stage uses the judge.

Record stages resume through the runner; a training stage is skipped when its folder holds a
finished run with the same config. So a second `rlaif run` on the same OUT does no new work.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rlaif.config import config_hash
from rlaif.errors import GateFailed, UserError
from rlaif.executors import use_executor
from rlaif.pipeline_config import PipelineConfig, load_pipeline, uses_judge
from rlaif.records import read_jsonl, record_id, write_atomic, write_jsonl_atomic
from rlaif.roles import Engines, judge_is_policy, resolve_roles
from rlaif.backends.base import independent_requests
from rlaif.runner import OutputLock, run_stage
from rlaif.judge import Judge, JudgeConfig
from rlaif.stages.labeler import LabelConfig
from rlaif.train.dpo import DPOConfig
from rlaif.train.ppo import PPOConfig
from rlaif.train.reward_model import RewardConfig
from rlaif.train.sft import SFTConfig

class Pipeline:
    """Runs one pipeline config into one output folder."""

    launcher = None  # how training stages run: None in this process, else an AccelerateLauncher

    def __init__(self, cfg: PipelineConfig, out: Path, overwrite: bool = False, loader=None):
        """`loader`: EngineConfig -> engine for the roles (default rlaif.backends.load_engine)."""
        from rlaif.constitution import load_constitution

        self.cfg, self.out, self.overwrite = cfg, Path(out), overwrite
        self.constitution = load_constitution(cfg.constitution)
        self.roles, defaulted = resolve_roles(cfg.policy, cfg.critic, cfg.judge, cfg.engine)
        self.engines = Engines(self.roles, defaulted, loader)
        self.summary: dict = {"pipeline": cfg.name, "constitution": f"{self.constitution.name} v{self.constitution.version}",
                              "roles": self.engines.describe(), "judge_is_policy": judge_is_policy(self.roles),
                              "stages": {}}
        self.failed = 0

    def engine(self, role: str):
        """The engine serving `role` ("policy", "critic" or "judge"), built on first use."""
        return self.engines[role]

    def judge_config(self) -> JudgeConfig:
        """How the run's judge asks: the label stage's block (its judge fields), or the defaults,
        seeded by the run. Every use of the judge in the run follows it."""
        stage = self.cfg.stages.label
        cfg = JudgeConfig(**stage.judge_fields()) if stage else JudgeConfig()
        return cfg.model_copy(update={"seed": self.cfg.seed})

    def judge(self, constitution=None, *, stage: bool = False) -> Judge:
        """The run's judge: the judge role's engine (`stage`: the one labeling runs over, which is a
        Ray stand-in under `executor: ray`), the run's constitution (or `constitution`), `judge_config()`."""
        engine = self.stage_engine("judge") if stage else self.engine("judge")
        return Judge(engine, constitution or self.constitution, self.judge_config())

    def batch_size(self, role: str) -> int:
        return self.roles[role].batch_size

    def stage_engine(self, role: str):
        """The engine responses, critique and label run over: the role's own, or with `executor: {kind:
        ray}` a stand-in that each Ray actor builds from the role's EngineConfig (rlaif/executors)."""
        if self.cfg.executor.kind == "ray":
            from rlaif.executors import RemoteEngine

            return RemoteEngine(self.roles[role])
        return self.engine(role)

    def close(self, keep: tuple[str, ...] = ()):
        self.engines.close(keep)

    def timed(self, name: str, fn):
        started = time.time()
        print(f"== {name}", flush=True)
        info = dict(fn() or {})
        info["wall_seconds"] = round(time.time() - started, 1)  # this invocation (≈0 when resumed)
        self.summary["stages"][name] = info
        return info

    # ------------------------------------------------------------------ stages

    def prompts(self) -> list[dict]:
        from rlaif.prompts_io import read_prompts

        return read_prompts(self.cfg.prompts.file)

    def judge_check(self) -> dict:
        from rlaif.eval.judge_check import require_accuracy, run_judge_check
        from rlaif.judge import judge_check_line, judge_verdict

        result = run_judge_check(self.judge(), self.out / "judge_check", batch_size=self.batch_size("judge"),
                                 overwrite=self.overwrite)
        line = judge_check_line(result)
        print(f"warning: {line}" if judge_verdict(result) != "ok" else line, flush=True)
        self.summary["judge_check"] = result
        if self.cfg.judge_check.require_accuracy is not None and result["status"] != "skipped":
            require_accuracy(result, self.cfg.judge_check.require_accuracy)
        return {k: result.get(k) for k in ("status", "pairs", "accuracy", "mean_p_right", "seconds_per_pair")}

    def judge_audit(self) -> dict:
        """The judge audit (OUT/judge_audit/); a tripped gate stops the run (GateFailed: exit 1)."""
        from rlaif.eval.judge_audit import run_judge_audit
        from rlaif.judge import AuditGates

        stage = self.cfg.judge_audit
        try:
            result = run_judge_audit(self.judge(), self.out / "judge_audit", pairs_file=stage.pairs,
                                     self_pairs_file=stage.self_pairs, seed=self.cfg.seed,
                                     gates=AuditGates(**stage.model_dump(include=set(AuditGates.model_fields))))
        finally:
            self.summary["judge_audit"] = read_audit(self.out / "judge_audit")
        for line in result["lines"]:
            print(f"judge audit: {line}", flush=True)
        return {"pairs": result.get("pairs"), "flagged": [k for k, v in result.get("probes", {}).items()
                                                          if v.get("flagged")]}

    def responses(self) -> dict:
        rc = self.cfg.stages.responses.model_copy(update={"seed": self.cfg.seed})
        from rlaif.stages.responses import check_context, expand, make_process

        policy = self.stage_engine("policy")
        prompts = self.prompts()[: self.cfg.prompts.limit]
        check_context(policy, prompts, rc.max_tokens, self.cfg.prompts.file)
        with use_executor(self.cfg.executor):
            result = run_stage("responses", expand(prompts, policy.model, rc), make_process(policy, rc),
                               self.out / "responses", config=rc, batch_size=self.batch_size("policy"),
                               overwrite=self.overwrite, stats=getattr(policy, "stats", None),
                               fixed_batches=not independent_requests(policy))
        self.failed += result.failed
        self.response_records = result.records
        return {"records": len(result.records), "new": result.written, "failed": result.failed}

    def critique(self) -> dict:
        from rlaif.stages.critique_revision import run_critique

        first = [r for r in self.response_records if r["sample"] == 0]
        cc = self.cfg.stages.critique.model_copy(update={"seed": self.cfg.seed})
        with use_executor(self.cfg.executor):
            summary = run_critique(first, self.constitution, self.stage_engine("critic"), self.out / "critique",
                                   config=cc, batch_size=self.batch_size("critic"), overwrite=self.overwrite)
        self.failed += summary.get("failed", 0)
        return summary

    def pairs_to_label(self) -> list[dict]:
        stage = self.cfg.stages.label
        pairs = []
        if "revisions" in stage.pairs and (self.out / "critique" / "revision_pairs.jsonl").exists():
            for r in read_jsonl(self.out / "critique" / "revision_pairs.jsonl", allow_empty=True):
                pairs.append({"id": r["id"], "prompt": r["prompt"], "response_a": r["chosen"][0]["content"],
                              "response_b": r["rejected"][0]["content"], "kind": "revision_vs_original"})
        if "samples" in stage.pairs and getattr(self, "response_records", None):
            by_prompt: dict[str, list[dict]] = {}
            for r in self.response_records:
                by_prompt.setdefault(r["prompt_id"], []).append(r)
            for group in by_prompt.values():
                group.sort(key=lambda r: r["sample"])
                if len(group) >= 2 and group[0]["response"].strip() != group[1]["response"].strip():
                    pairs.append({"id": record_id("sample_pair", group[0]["id"], group[1]["id"]),
                                  "prompt": group[0]["prompt"], "response_a": group[0]["response"],
                                  "response_b": group[1]["response"], "kind": "two_samples"})
        if not pairs:
            raise UserError("stages.label: nothing to label (no revision pairs and fewer than 2 samples "
                            "per prompt); set stages.responses.n: 2 or add a critique stage")
        return pairs

    def label(self) -> dict:
        from rlaif.constitution import load_constitution
        from rlaif.stages.labeler import run_label

        stage = self.cfg.stages.label
        keep = {"margin": stage.margin, "drop_within_margin": stage.drop_within_margin}
        judge = self.judge(stage=True)
        judge = judge.with_config(LabelConfig(**judge.config.model_dump(), **keep))
        bs = self.batch_size("judge")
        out = self.out / "label"
        out.mkdir(parents=True, exist_ok=True)
        pairs_path = out / "pairs.jsonl"
        write_jsonl_atomic(pairs_path, self.pairs_to_label())
        with use_executor(self.cfg.executor):
            info = run_label(pairs_path, judge, out, batch_size=bs, overwrite=self.overwrite)
        self.failed += info.get("failed", 0)
        if stage.compare_constitution:
            other = load_constitution(stage.compare_constitution)
            alt = self.out / "label_compare"
            with use_executor(self.cfg.executor):
                info["compare"] = run_label(pairs_path, judge.with_constitution(other), alt, batch_size=bs,
                                            overwrite=self.overwrite)
            info["comparison"] = compare_labels(out / "labels.jsonl", alt / "labels.jsonl",
                                                self.constitution.name, other.name)
        return info

    def rate(self) -> dict:
        """UltraFeedback-style: the responses stage's samples of each prompt rated by the judge on the
        stage's aspects -> rate/ratings.jsonl, preferences.jsonl (binarised), rankings.jsonl."""
        from rlaif.stages.rate import run_rate

        out = self.out / "rate"
        out.mkdir(parents=True, exist_ok=True)
        groups: dict[str, dict] = {}
        for r in self.response_records:
            groups.setdefault(r["prompt_id"], {"prompt": r["prompt"], "completions": []})["completions"].append(
                r["response"])
        completions = out / "completions.jsonl"
        write_jsonl_atomic(completions, groups.values())
        cfg = self.cfg.stages.rate.model_copy(update={"seed": self.cfg.seed})
        with use_executor(self.cfg.executor):
            info = run_rate(completions, self.judge(stage=True), out, cfg, batch_size=self.batch_size("judge"),
                            overwrite=self.overwrite)
        self.failed += info.get("failed", 0)
        return info

    def preference_file(self, rankings: bool = False) -> str:
        """What the training stages read: the label stage's preferences, else the rate stage's
        binarised pairs (`rankings`: its rankings, for the k-wise reward model)."""
        if self.cfg.stages.rate is not None and self.cfg.stages.label is None:
            return str(self.out / "rate" / ("rankings.jsonl" if rankings else "preferences.jsonl"))
        return str(self.out / "label" / "preferences.jsonl")

    def train(self, name: str, cls, fields: dict, fn, keep: tuple[str, ...] = (), block=None) -> dict:
        """Train stage `name` into OUT/name: its block (the trainer's config, `stages.NAME` unless given)
        with the fields the pipeline fills in (`fields`, the policy's system prompt, output_dir)."""
        stage_dir = self.out / name
        block = getattr(self.cfg.stages, name) if block is None else block
        # every trainer builds its prompts as the policy's engine does, with its system prompt
        prompt = {"system_prompt": self.roles["policy"].system_prompt}
        if block is None:
            given = {}
        elif isinstance(block, dict):  # a block given as a mapping (a caller's own stage settings)
            given = dict(block)
        else:
            given = block.model_dump(exclude_unset=True)
        cfg = cls.model_validate({**given, **prompt, **fields, "output_dir": str(stage_dir)})
        done = stage_dir / "done.json"
        key = config_hash({"config": cfg.model_dump(mode="json"), "inputs": self._input_hash(fields)})
        if not self.overwrite and done.exists() and json.loads(done.read_text()).get("key") == key:
            print(f"{name}: already trained with this config and data -> {stage_dir}")
            return json.loads((stage_dir / "summary.json").read_text())
        self.close(keep)  # free the engines' memory while training (but those the trainer calls)
        # `launcher` (rlaif/train/launcher.py): the trainer under `accelerate launch`; None: in this process
        result = self.launcher(fn, cfg) if self.launcher else fn(cfg)
        write_atomic(done, json.dumps({"key": key}) + "\n")
        return result

    def _input_hash(self, fields: dict) -> str:
        """Hash of the training data files a stage reads, so new labels retrain; a model folder this
        run trained (e.g. the SL-CAI model DPO starts from) counts by its own done key."""
        parts = []
        for v in fields.values():
            if isinstance(v, str) and Path(v).is_file():
                parts.append(config_hash(Path(v).read_text()))
            elif isinstance(v, str) and (Path(v) / "done.json").is_file():
                parts.append(config_hash((Path(v) / "done.json").read_text()))
        return config_hash(parts)

    def sft(self) -> dict:
        from rlaif.train.sft import train_sft

        data = str(self.out / "critique" / "sl_cai.jsonl")
        return self.train("sft", SFTConfig, {"data": data, "policy": self.roles["policy"].model,
                                             "seed": self.cfg.seed}, train_sft)

    def start_policy(self, rejection_sampled: bool = True) -> str:
        """The model preference training starts from (and keeps as its reference): the rejection-
        sampling model, else the SL-CAI model when the pipeline has an sft stage, else the policy
        role's model."""
        if rejection_sampled and self.cfg.stages.rejection_sampling is not None:
            return str(self.out / "rejection_sampling")
        if self.cfg.stages.sft is not None:
            return str(self.out / "sft")
        return self.roles["policy"].model

    def rejection_sampling(self) -> dict:
        """Best of K samples of the starting policy by the stage's reward, then SFT on them."""
        from rlaif.backends import load_engine
        from rlaif.train.best_of_n import BestOfNConfig
        from rlaif.train.rejection_sampling import sample_best
        from rlaif.train.sft import train_sft

        stage = self.cfg.stages.rejection_sampling
        start = self.start_policy(rejection_sampled=False)
        prompts = self.prompts()[: self.cfg.prompts.limit]
        if stage.reward == "labeler:direct":
            from rlaif.train.rewards import direct_reward

            reward_fn = direct_reward(self.judge())
        else:
            from rlaif.train.rewards import reward_fn_from_spec

            spec = f"rm:{self.out / 'reward_model'}" if stage.reward == "rm" else stage.reward
            reward_fn = reward_fn_from_spec(spec, judge=start, prompt_records=prompts)
        self.close(keep=("judge",) if stage.reward == "labeler:direct" else ())
        engine = load_engine(self.roles["policy"].model_copy(update={"model": start}))
        bon = BestOfNConfig(n=stage.n, max_tokens=stage.max_tokens, temperature=stage.temperature,
                            seed=self.cfg.seed, batch_size=self.batch_size("policy"))
        try:
            data, sampled = sample_best(prompts, engine, reward_fn, bon, self.out / "rejection_sampling_data",
                                        overwrite=self.overwrite)
        finally:
            engine.close()
        self.failed += sampled.get("failed", 0)
        result = self.train("rejection_sampling", SFTConfig, {"data": str(data), "policy": start,
                                                              "seed": self.cfg.seed}, train_sft, block=stage.sft)
        return {**result, "best_of_n": sampled}

    def reward_model(self) -> dict:
        from rlaif.train.reward_model import train_reward_model

        prefs = self.preference_file(rankings=True)
        return self.train("reward_model", RewardConfig, {"prefs": prefs, "base": self.roles["policy"].model,
                                                         "seed": self.cfg.seed}, train_reward_model)

    def dpo(self) -> dict:
        from rlaif.train.dpo import train_dpo

        prefs = self.preference_file()
        return self.train("dpo", DPOConfig, {"prefs": prefs, "policy": self.start_policy(),
                                             "seed": self.cfg.seed}, train_dpo)

    def ppo(self) -> dict:
        from rlaif.train.ppo import train_ppo

        from rlaif.pipeline_config import ppo_reward

        block = self.cfg.stages.ppo
        reward = ppo_reward(block)
        constitution = block.constitution or self.cfg.constitution
        if reward == "rm":
            reward = f"rm:{self.out / 'reward_model'}"
        prompts_path = self.out / "ppo_prompts.jsonl"
        prompts = self.prompts()[: self.cfg.prompts.limit]
        write_jsonl_atomic(prompts_path, [{"prompt": p["prompt"]} for p in prompts])
        fields = {"prompts": str(prompts_path), "policy": self.start_policy(), "reward": reward,
                  "constitution": constitution, "seed": self.cfg.seed}
        if reward != "labeler:direct":
            return self.train("ppo", PPOConfig, fields, train_ppo)
        # direct RLAIF: the reward is the judge's score, from the judge's own engine
        from rlaif.constitution import load_constitution
        from rlaif.train.rewards import direct_reward

        judge_role = self.roles["judge"]
        fields["judge"] = f"{judge_role.kind}:{judge_role.model}"
        const = load_constitution(constitution)
        return self.train("ppo", PPOConfig, fields, keep=("judge",), fn=lambda cfg: train_ppo(
            cfg, reward_fn=direct_reward(self.judge(const))))

    def grpo(self) -> dict:
        """GRPO / RLOO from the start policy (the SL-CAI model when there is one); judge rewards are
        scored by the judge role's engine (a server judge scores each group concurrently)."""
        from rlaif.pipeline_config import grpo_uses_judge
        from rlaif.train.grpo import GRPOConfig
        from rlaif.train.grpo_loop import train_grpo

        block = self.cfg.stages.grpo
        if "rewards" in block.model_fields_set:  # a model reward with spec "rm" is this run's reward model
            rm = f"rm:{self.out / 'reward_model'}"
            block = block.model_copy(update={"rewards": [
                r.model_copy(update={"spec": rm}) if r.kind == "model" and r.spec == "rm" else r
                for r in block.rewards]})
        prompts_path = self.out / "grpo_prompts.jsonl"
        prompts = self.prompts()[: self.cfg.prompts.limit]
        write_jsonl_atomic(prompts_path, [{"prompt": p["prompt"]} for p in prompts])
        fields = {"prompts": str(prompts_path), "policy": self.start_policy(), "seed": self.cfg.seed,
                  "constitution": block.constitution or self.cfg.constitution}
        if not grpo_uses_judge(block):
            return self.train("grpo", GRPOConfig, fields, train_grpo, block=block)
        judge_role = self.roles["judge"]
        fields["judge"] = f"{judge_role.kind}:{judge_role.model}"
        return self.train("grpo", GRPOConfig, fields, keep=("judge",), block=block,
                          fn=lambda cfg: train_grpo(cfg, judge=self.judge(fields["constitution"])))

    def rounds(self) -> dict:
        from rlaif.iterate import Rounds

        return Rounds(self).run()

    def evaluate(self) -> dict:
        from rlaif.eval.policy_eval import evaluate_pipeline

        return evaluate_pipeline(self)

    def run(self) -> int:
        s = self.cfg.stages
        stopped = None  # a tripped gate: the report is still written, then the run stops (exit 1)
        try:
            if self.cfg.judge_check.enabled and uses_judge(self.cfg):
                self.timed("judge_check", self.judge_check)
            if self.cfg.judge_audit is not None and uses_judge(self.cfg):
                self.timed("judge_audit", self.judge_audit)
            for name in ("responses", "critique", "sft", "label", "rate", "reward_model", "rejection_sampling", "dpo", "ppo",
                         "grpo", "evaluate"):
                if getattr(s, name) is not None:
                    self.timed(name, getattr(self, name))
                if name == "ppo" and self.cfg.rounds is not None:
                    self.timed("rounds", self.rounds)
        except GateFailed as e:
            stopped = e
        finally:
            self.close()
            self.summary["role_usage"] = {role: self.engines.usage(role) for role in self.roles}
        from rlaif.eval.run_report import write_run_report

        report = write_run_report(self)
        print(f"report: {report}")
        if stopped is not None:
            raise stopped
        return 1 if self.failed else 0


def read_audit(folder: Path) -> dict | None:
    """The audit a run wrote (also when a gate stopped it), for the report; None if none."""
    try:
        return json.loads((folder / "audit.json").read_text())
    except (OSError, ValueError):
        return None


def compare_labels(path_a: Path, path_b: Path, name_a: str, name_b: str) -> dict:
    """How two constitutions label the same pairs: agreement on the side, and chosen length."""
    def by_pair(path):  # label ids include the constitution; the pair's own id does not
        return {r.get("source_id") or r["id"]: r for r in read_jsonl(path, allow_empty=True)}

    a, b = by_pair(path_a), by_pair(path_b)
    common = [i for i in a if i in b]
    if not common:
        return {"pairs": 0}

    def chosen_words(r):
        return len(r["chosen"][0]["content"].split())

    agree = sum((a[i]["p_a"] >= 0.5) == (b[i]["p_a"] >= 0.5) for i in common)
    return {"pairs": len(common), "agreement": agree / len(common),
            "mean_p_a_" + name_a: sum(a[i]["p_a"] for i in common) / len(common),
            "mean_p_a_" + name_b: sum(b[i]["p_a"] for i in common) / len(common),
            "chosen_words_" + name_a: sum(chosen_words(a[i]) for i in common) / len(common),
            "chosen_words_" + name_b: sum(chosen_words(b[i]) for i in common) / len(common)}


def run_pipeline(path_or_name: str, out: Path, overrides=None, constitution=None, overwrite=False,
                 roles: dict | None = None, launcher=None) -> int:
    """`roles`: role -> model spec replacing the pipeline's model for that role (see load_pipeline).
    `launcher`: runs the training stages (rlaif/train/launcher.py); this process keeps the lock."""
    _, cfg = load_pipeline(path_or_name, overrides, constitution, roles)
    out = Path(out)
    with OutputLock(out):
        write_atomic(out / "pipeline.json", json.dumps(cfg.model_dump(mode="json"), indent=2) + "\n")
        pipeline = Pipeline(cfg, out, overwrite)
        pipeline.launcher = launcher
        return pipeline.run()
