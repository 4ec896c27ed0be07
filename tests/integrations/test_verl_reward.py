"""The judge as verl's custom reward function (rlaif/integrations/verl.py), in process.

verl 0.9's naive reward manager (verl/experimental/reward_loop/reward_manager/naive.py,
`NaiveRewardManager.run_single`) calls, for each sample and all samples at once
(`RewardLoopWorker.compute_score_batch` gathers them):

    extra_info = data_item.non_tensor_batch.get("extra_info", {})
    ...
    extra_info["num_turns"] = num_turns
    extra_info["rollout_reward_scores"] = rollout_reward_scores
    response_str = ... self.tokenizer.decode(valid_response_ids, skip_special_tokens=True)
    if self.is_async_reward_score:
        result = await self.compute_score(data_source=data_source, solution_str=response_str,
                                          ground_truth=ground_truth, extra_info=extra_info, ...)
    else:
        result = await self.loop.run_in_executor(None, lambda: self.compute_score(...same kwargs...))

The first tests call our functions exactly that way. Where verl itself imports (it needs ray,
tensordict, omegaconf and more, but no GPU), the last test runs verl's own manager on a DataProto,
with the function loaded by verl's own `get_custom_reward_fn` from the config lines the README gives.
The server path (`url=`) is tested in test_reward_server.py.
"""

from __future__ import annotations

import asyncio

import pytest

from rlaif.errors import UserError
from rlaif.integrations.verl import compute_score, compute_score_async

TOL = 1e-4
SAMPLES = [("How do I make a cup of tea?", "Boil water, pour it over a tea bag and wait three minutes."),
           ("What is the capital of France?", "Paris."),
           ("Tell me how to pick a lock to break into a house.", "Sure, first get a tension wrench and")]


@pytest.fixture
def env_judge(monkeypatch, embedded_engine):
    from rlaif.judge import Judge

    monkeypatch.setenv("RLAIF_JUDGE", "embedded:smollm2-135m-instruct")
    monkeypatch.setenv("RLAIF_JUDGE_DEVICE", "cpu")
    monkeypatch.delenv("RLAIF_REWARD_URL", raising=False)
    return Judge(embedded_engine, "harmless")


def manager_kwargs(i, question, reply):
    info = {"question": question, "index": i, "num_turns": None, "rollout_reward_scores": {}}
    return {"data_source": "hh", "solution_str": reply, "ground_truth": None, "extra_info": info}


@pytest.mark.slow
def test_compute_score_in_the_managers_thread_pool(env_judge):
    async def manager():
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(loop.run_in_executor(None, lambda k=manager_kwargs(i, q, r): compute_score(**k))
                                      for i, (q, r) in enumerate(SAMPLES)))

    got = asyncio.run(manager())
    want = env_judge.score_many([q for q, _ in SAMPLES], [r for _, r in SAMPLES])
    assert [g["score"] for g in got] == pytest.approx([s.value for s in want], abs=TOL)
    assert [g["judge_expected"] for g in got] == pytest.approx([s.expected for s in want], abs=1e-3)


@pytest.mark.slow
def test_compute_score_async_awaited_on_the_managers_loop(env_judge):
    async def manager():
        return await asyncio.gather(*(compute_score_async(**manager_kwargs(i, q, r))
                                      for i, (q, r) in enumerate(SAMPLES)))

    got = asyncio.run(manager())
    want = env_judge.score_many([q for q, _ in SAMPLES], [r for _, r in SAMPLES])
    assert [g["score"] for g in got] == pytest.approx([s.value for s in want], abs=TOL)


def test_a_row_without_its_prompt_is_one_clear_error():
    with pytest.raises(UserError, match="extra_info has no 'prompt' or 'question'") as e:
        compute_score(data_source="x", solution_str="hi", ground_truth=None, extra_info={"index": 0})
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="extra_info has no 'query'"):
        compute_score(data_source="x", solution_str="hi", ground_truth=None, extra_info={"prompt": "p"},
                      prompt_key="query")


@pytest.mark.slow
def test_verls_own_naive_reward_manager(env_judge, tokenizer):
    pytest.importorskip("verl.experimental.reward_loop.reward_manager.naive",
                        reason="verl is not installed in this environment")
    import numpy as np
    import torch
    from omegaconf import OmegaConf

    from verl import DataProto
    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
    from verl.trainer.ppo.reward import get_custom_reward_fn

    prompt_len, resp_len = 32, 24
    prompts, responses, masks = [], [], []
    for q, r in SAMPLES:  # left-padded prompt ids, right-padded response ids, as rollouts leave them
        p_ids = tokenizer(q, add_special_tokens=False)["input_ids"][-prompt_len:]
        r_ids = tokenizer(r, add_special_tokens=False)["input_ids"][:resp_len - 1] + [tokenizer.eos_token_id]
        pad = tokenizer.pad_token_id
        prompts.append([pad] * (prompt_len - len(p_ids)) + p_ids)
        responses.append(r_ids + [pad] * (resp_len - len(r_ids)))
        masks.append([0] * (prompt_len - len(p_ids)) + [1] * (len(p_ids) + len(r_ids)) + [0] * (resp_len - len(r_ids)))
    data = DataProto.from_dict(
        tensors={"prompts": torch.tensor(prompts), "responses": torch.tensor(responses),
                 "attention_mask": torch.tensor(masks)},
        non_tensors={"data_source": np.array(["hh"] * len(SAMPLES), dtype=object),
                     "reward_model": np.array([{"ground_truth": None} for _ in SAMPLES], dtype=object),
                     "extra_info": np.array([{"question": q, "index": i} for i, (q, _) in enumerate(SAMPLES)],
                                            dtype=object)})
    results = {}
    for name in ("compute_score", "compute_score_async"):
        config = OmegaConf.create({"reward": {"custom_reward_function": {
            "path": "pkg://rlaif.integrations.verl", "name": name, "reward_kwargs": {}}}})

        async def worker():
            manager = NaiveRewardManager(config, tokenizer, get_custom_reward_fn(config))
            return await asyncio.gather(*(manager.run_single(data[i:i + 1]) for i in range(len(data))))

        results[name] = asyncio.run(worker())
    decoded = [tokenizer.decode(ids, skip_special_tokens=True) for ids in responses]
    want = env_judge.score_many([q for q, _ in SAMPLES], decoded)
    for name, out in results.items():
        assert [o["reward_score"] for o in out] == pytest.approx([s.value for s in want], abs=TOL), name
        assert set(out[0]["reward_extra_info"]) == {"score", "judge_expected"}
