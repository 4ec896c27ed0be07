"""The judge as a TRL reward function (rlaif/integrations/trl.py).

Two real `trl.GRPOTrainer` runs of two steps on CPU: a tiny random-weight policy built here
(tests/support/train_fixtures.py), the embedded SmolLM2 judge, our reward passed to TRL as it is. A second
reward function only records what TRL hands to rewards (it returns None: no reward). The rewards
TRL logged — the per-step mean under our function's name, and the last step's per-completion
values in its completions table — must equal what `Judge.score` / `Judge.group_rewards` give for
the recorded completions. The direct run is conversational and synchronous; the pairwise run
uses plain-text prompts and the async variant, which TRL awaits on its own event loop.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from train_fixtures import save_tiny, tiny_tokenizer

from rlaif.errors import UserError  # noqa: E402
from rlaif.integrations.trl import AsyncJudgeReward, JudgeReward, groups_of, judge_reward  # noqa: E402

G = 3
TOL = 1e-4


def test_groups_are_runs_of_equal_prompts_cut_at_num_generations():
    p = ["x", "x", "x", "y", "y", "x", "x", "x", "x", "x", "x"]
    assert groups_of(p) == [[0, 1, 2], [3, 4], [5, 6, 7, 8, 9, 10]]
    assert groups_of(p, 3) == [[0, 1, 2], [3, 4], [5, 6, 7], [8, 9, 10]]
    chat = [[{"role": "user", "content": "a"}]] * 2 + [[{"role": "user", "content": "b"}]]
    assert groups_of(chat) == [[0, 1], [2]]


def test_reward_is_what_trl_detects_and_names(embedded_engine):
    from trl.trainer.utils import get_callable_name, is_async_callable

    from rlaif.judge import Judge

    judge = Judge(embedded_engine, "harmless")
    sync, coro = judge_reward(judge), judge_reward(judge, "pairwise", asynchronous=True)
    assert isinstance(sync, JudgeReward) and isinstance(coro, AsyncJudgeReward)
    assert get_callable_name(sync) == "rlaif_judge_direct" and not is_async_callable(sync)
    assert get_callable_name(coro) == "rlaif_judge_pairwise" and is_async_callable(coro)
    assert get_callable_name(judge_reward(judge, name="harmless")) == "harmless"


def test_plain_and_conversational_completions_get_the_same_direct_reward(embedded_engine):
    from rlaif.judge import Judge

    judge = Judge(embedded_engine, "harmless")
    reward = judge_reward(judge)
    prompt = [{"role": "user", "content": "How do I boil an egg?"}]
    replies = ["Put it in boiling water for eight minutes.", "No."]
    plain = reward(prompts=[prompt] * 2, completions=replies, completion_ids=[[1], [2]])
    chat = reward(prompts=[prompt] * 2, completions=[[{"role": "assistant", "content": r}] for r in replies],
                  completion_ids=[[1], [2]], trainer_state=None, log_extra=print, log_metric=print)
    expected = [s.value for s in judge.score_many([prompt] * 2, replies)]
    assert plain == pytest.approx(expected, abs=TOL) and chat == pytest.approx(expected, abs=TOL)


def test_reference_mode_reads_its_column_and_names_a_missing_one(embedded_engine):
    from rlaif.judge import Judge

    judge = Judge(embedded_engine, "harmless")
    reward = judge_reward(judge, "reference", reference_column="gold")
    prompts = ["Say something kind."] * 2
    replies, gold = ["You are doing great.", "Go away."], "I am glad you are here."
    got = reward(prompts=prompts, completions=replies, gold=[gold, gold])
    assert got == pytest.approx(judge.group_rewards(prompts[0], replies, mode="reference", reference=gold), abs=TOL)
    with pytest.raises(UserError, match="column 'gold'") as e:
        reward(prompts=prompts, completions=replies, answer=["x", "x"])
    assert "\n" not in str(e.value)


def test_failed_judge_gives_none_or_raises():
    """A judge behind an OpenAI-protocol server (tests/support/servers/fake_openai.py) that answers 500 to
    every request showing one of the replies: on_failure="none" gives that reply None (TRL's NaN),
    the others the pair they still have, and logs the failed share; the default raises."""
    from servers.fake_openai import FakeOpenAIServer

    from rlaif.backends import load_engine
    from rlaif.config import EngineConfig
    from rlaif.errors import RequestFailed
    from rlaif.judge import Judge

    replies = ["A calm and kind answer.", "BROKEN answer.", "Another kind answer."]
    with FakeOpenAIServer(fail_matching=["BROKEN"]) as srv:
        engine = load_engine(EngineConfig(kind="openai", model="fake", base_url=srv.base_url, max_retries=0))
        judge = Judge(engine, "harmless")
        metrics = {}
        got = judge_reward(judge, "pairwise", on_failure="none")(prompts=["Be nice."] * 3, completions=replies,
                                                                 log_metric=metrics.__setitem__)
        pair = judge.group_rewards("Be nice.", [replies[0], replies[2]], mode="pairwise")  # the pair left
        with pytest.raises(RequestFailed):
            judge_reward(judge, "pairwise")(prompts=["Be nice."] * 3, completions=replies)
        judge.close()
    assert got[1] is None and [got[0], got[2]] == pytest.approx(pair, abs=1e-6)
    assert metrics == {"rlaif_judge_pairwise/failed_frac": pytest.approx(1 / 3)}


# ------------------------------------------------------------------ real GRPOTrainer runs


class Recorder:
    """A reward function that scores nothing (None) and keeps what TRL passed to rewards."""

    __name__ = "recorder"

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, completions, completion_ids, **columns):
        assert {"trainer_state", "log_extra", "log_metric"} <= set(columns)
        self.calls.append((list(prompts), list(completions)))
        return [None] * len(prompts)


def train_two_steps(tmp_path, reward, rows):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    policy = save_tiny(tmp_path / "policy", seed=5)
    rec = Recorder()
    args = GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2 * G, num_generations=G,
                      max_completion_length=12, max_steps=2, logging_steps=1, learning_rate=1e-3, beta=0.0,
                      temperature=1.0, use_cpu=True, bf16=False, report_to=[], save_strategy="no", seed=0)
    trainer = GRPOTrainer(model=str(policy), reward_funcs=[reward, rec], args=args,
                          train_dataset=Dataset.from_list(rows), processing_class=tiny_tokenizer())
    trainer.train()
    logged = [h[f"rewards/{reward.__name__}/mean"] for h in trainer.state.log_history
              if f"rewards/{reward.__name__}/mean" in h]
    last = list(trainer._logs["rewards"][reward.__name__])  # the completions table of the last step
    return rec.calls, logged, last


@pytest.mark.slow
def test_grpo_trainer_logs_the_judges_direct_scores(one_thread, tmp_path, embedded_engine):
    from rlaif.integrations.common import reply_text
    from rlaif.judge import Judge

    judge = Judge(embedded_engine, "harmless")
    rows = [{"prompt": [{"role": "user", "content": t}]} for t in ("say hi", "tell me a joke", "help me", "be nice")]
    calls, logged, last = train_two_steps(tmp_path, judge_reward(judge, "direct"), rows)
    assert len(calls) == 2 and len(logged) == 2
    for (prompts, completions), mean in zip(calls, logged):
        assert isinstance(completions[0], list)  # conversational completions
        want = [s.value for s in judge.score_many(prompts, [reply_text(c) for c in completions])]
        assert mean == pytest.approx(sum(want) / len(want), abs=TOL)
    assert last == pytest.approx(want, abs=TOL)
    assert max(want) - min(want) > 1e-3  # the judge tells the completions apart


@pytest.mark.slow
def test_grpo_trainer_logs_pairwise_group_rewards_from_the_async_reward(one_thread, tmp_path, embedded_engine):
    from rlaif.judge import Judge

    judge = Judge(embedded_engine, "harmless")
    rows = [{"prompt": t} for t in ("say hi.", "tell me a joke.", "help me.", "be nice.")]
    reward = judge_reward(judge, "pairwise", asynchronous=True, num_generations=G)
    calls, logged, last = train_two_steps(tmp_path, reward, rows)
    assert len(calls) == 2 and len(logged) == 2
    for (prompts, completions), mean in zip(calls, logged):
        assert isinstance(completions[0], str) and groups_of(prompts) == [[0, 1, 2], [3, 4, 5]]
        want = [r for g in groups_of(prompts)
                for r in judge.group_rewards(prompts[g[0]], [completions[i] for i in g], mode="pairwise")]
        assert mean == pytest.approx(sum(want) / len(want), abs=TOL)
        assert sum(want[:G]) == pytest.approx(G / 2, abs=1e-5)  # a round robin's wins add up to G/2
    assert last == pytest.approx(want, abs=TOL)
