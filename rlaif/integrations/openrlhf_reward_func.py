"""The judge inside OpenRLHF's rollout workers: give this file's path as `--reward.remote_url`.

OpenRLHF 0.11.2 loads a `.py` remote_url with importlib and calls `reward_func(queries, prompts,
labels)` in its vLLM engine actors (openrlhf/utils/agent.py, `SingleTurnAgentExecutor`), one
rollout at a time from many threads (`asyncio.to_thread`). Here every call goes to one judge per
process through a background event loop, so calls that arrive together are scored in one engine
batch. The judge is named by environment variables (rlaif/integrations/common.py): RLAIF_JUDGE
(model spec, default embedded:smollm2-135m-instruct), RLAIF_CONSTITUTION (default harmless),
RLAIF_JUDGE_DEVICE, RLAIF_JUDGE_BATCH. Set them in Ray's runtime env so the actors see them.

    python -m openrlhf.cli.train_ppo_ray ... \\
        --reward.remote_url $(python -c "import rlaif.integrations.openrlhf_reward_func as m; print(m.__file__)")

Returns, like OpenRLHF's own example: {"rewards": tensor, "scores": tensor, "extra_logs":
{"judge_expected": tensor}} — the direct score (E[k]-1)/9 in [0, 1] and E[k] in [1, 10].
"""

from __future__ import annotations

from rlaif.integrations.common import judge_from_env, run_in_background
from rlaif.integrations.openrlhf import judge_inputs


def score_queries(queries, prompts) -> tuple[list[float], list[float]]:
    """(rewards in [0, 1], expected scores in [1, 10]) for OpenRLHF's queries and prompts."""
    judge = judge_from_env()
    judge_prompts, replies = judge_inputs(queries, prompts)
    scores = run_in_background(judge.ascore_many(judge_prompts, replies))
    return [s.value for s in scores], [s.expected for s in scores]


def reward_func(queries, prompts, labels):
    import torch

    rewards, expected = score_queries(queries, prompts)
    r = torch.tensor(rewards, dtype=torch.float32)
    return {"rewards": r, "scores": r.clone(), "extra_logs": {"judge_expected": torch.tensor(expected)}}


__all__ = ["reward_func", "score_queries"]
