"""The shipped pipelines at tiny sizes: the `model_dir` fixture (a tiny random Llama saved as a model
folder) and `tiny_args`, the --set flags that shrink a pipeline to seconds."""

import pytest

from testkit import ROOT, build_tiny_llama

TINY = ["--set", "prompts.limit=4", "--set", "policy.batch_size=4", "--set", "judge.batch_size=4"]
STAGE_SIZES = {
    "responses": ["stages.responses.max_tokens=8"],
    "critique": ["stages.critique.critique_max_tokens=8", "stages.critique.revision_max_tokens=8"],
    "sft": ["stages.sft.epochs=1", "stages.sft.batch_size=2"],
    "reward_model": ["stages.reward_model.epochs=1", "stages.reward_model.batch_size=2"],
    "dpo": ["stages.dpo.epochs=1", "stages.dpo.batch_size=2"],
    "ppo": ["stages.ppo.max_steps=2", "stages.ppo.batch_size=2", "stages.ppo.mini_batch_size=2",
            "stages.ppo.max_new_tokens=6"],
    "grpo": ["stages.grpo.max_steps=2", "stages.grpo.batch_size=2", "stages.grpo.num_generations=2",
             "stages.grpo.max_new_tokens=6", "stages.grpo.max_length=64"],
    "evaluate": ["stages.evaluate.human_limit=3", "stages.evaluate.policy_prompts=2", "stages.evaluate.max_tokens=6"],
}
ROUNDS_SIZES = ["rounds.count=2", "rounds.prompts_per_round=2", "rounds.samples=2", "rounds.max_tokens=8",
                "rounds.train.epochs=1", "rounds.train.batch_size=2", "rounds.eval.policy_prompts=2",
                "rounds.eval.samples=1", "rounds.eval.max_tokens=6", "rounds.eval.bootstrap=100"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    import torch

    path = tmp_path_factory.mktemp("pipeline-model")
    model = build_tiny_llama(tokenizer, seed=1)
    model.config.max_position_embeddings = 4096  # labeler prompts quote whole conversations
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    return path


def tiny_args(name, model_dir):
    import yaml

    cfg = yaml.safe_load((ROOT / "pipelines" / f"{name}.yaml").read_text())
    stages = cfg.get("stages") or {}
    args = TINY + ["--set", f"policy.model={model_dir}", "--set", f"judge.model={model_dir}"]
    for stage, sets in STAGE_SIZES.items():
        if stage in stages:
            for s in sets:
                args += ["--set", s]
    for s in ROUNDS_SIZES if "rounds" in cfg else ():
        args += ["--set", s]
    return args
