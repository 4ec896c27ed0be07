"""The judge as verl's custom reward function.

verl 0.9 (verl/experimental/reward_loop/reward_manager/naive.py, `NaiveRewardManager.run_single`)
calls `compute_score(data_source=, solution_str=, ground_truth=, extra_info=)` once per sample,
all samples of a batch at once (`asyncio.gather`): an `async def` is awaited on its event loop, a
plain function runs in the loop's thread pool. It passes the decoded response but not the prompt,
so the dataset must carry the prompt in `extra_info` (`prompt`, or `question` as verl's GSM8K
preprocessing writes it; `prompt_key=` names another key). A dict result is kept: `score` is the
reward, the other keys (`judge_expected`) are logged.

Where the judge runs:
- `url=` (or RLAIF_REWARD_URL): a running `rlaif serve-reward`; concurrent calls meet there and
  are scored in one batch. RLAIF_REWARD_TOKEN (or `token_env=`) holds its token, if it has one;
- otherwise in this process, the judge named by RLAIF_JUDGE / RLAIF_CONSTITUTION (common.py),
  built once; concurrent calls go through its micro-batcher.

verl config (the reward worker must import rlaif):

    reward.custom_reward_function.path=pkg://rlaif.integrations.verl
    reward.custom_reward_function.name=compute_score          # or compute_score_async
    +reward.custom_reward_function.reward_kwargs.url=http://127.0.0.1:5000
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request

from rlaif.errors import RequestFailed, UserError
from rlaif.integrations.common import judge_from_env, run_in_background

PROMPT_KEYS = ("prompt", "question")
TOKEN_ENV = "RLAIF_REWARD_TOKEN"


def prompt_of(extra_info, prompt_key: str | None = None):
    """The prompt verl's dataset put in `extra_info` (text or chat messages)."""
    keys = (prompt_key,) if prompt_key else PROMPT_KEYS
    if isinstance(extra_info, dict):
        for k in keys:
            value = extra_info.get(k)
            if isinstance(value, str) and value.strip():
                return value
            if isinstance(value, (list, tuple)) and value:  # chat messages (numpy arrays arrive as lists)
                return [dict(m) for m in value]
    raise UserError(f"verl reward: extra_info has no {' or '.join(repr(k) for k in keys)}; verl passes the response "
                    "but not the prompt to compute_score, so put the prompt in each row's extra_info "
                    "(or name its key with reward_kwargs.prompt_key)")


def post_score(url: str, prompts: list, replies: list[str], token_env: str = TOKEN_ENV,
               timeout: float = 300.0) -> list[dict]:
    """POST {url}/score on a `rlaif serve-reward` -> [{"score", "judge_expected"}] per reply."""
    body = json.dumps({"prompts": prompts, "replies": replies}).encode()
    headers = {"Content-Type": "application/json"}
    token = os.environ.get(token_env)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url.rstrip("/") + "/score", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            reason = json.loads(e.read()).get("error", e.reason)
        except (ValueError, AttributeError):
            reason = e.reason
        if e.code in (400, 401, 413):
            raise UserError(f"reward server {url}: {e.code}: {reason}") from None
        raise RequestFailed(f"reward server {url}: {e.code}: {reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise RequestFailed(f"reward server {url}: {getattr(e, 'reason', e)}") from None
    return [{"score": r, "judge_expected": x} for r, x in zip(answer["rewards"], answer["expected"])]


def _result(score) -> dict:
    return {"score": score.value, "judge_expected": score.expected}


def compute_score(data_source=None, solution_str: str = "", ground_truth=None, extra_info=None, *,
                  url: str | None = None, prompt_key: str | None = None, token_env: str = TOKEN_ENV,
                  timeout: float = 300.0, **_verl_extras) -> dict:
    """verl's custom reward: the judge's direct score of `solution_str` in [0, 1] as "score"."""
    prompt = prompt_of(extra_info, prompt_key)
    url = url or os.environ.get("RLAIF_REWARD_URL")
    if url:
        return post_score(url, [prompt], [solution_str], token_env, timeout)[0]
    return _result(run_in_background(judge_from_env().ascore(prompt, solution_str)))


async def compute_score_async(data_source=None, solution_str: str = "", ground_truth=None, extra_info=None, *,
                              url: str | None = None, prompt_key: str | None = None, token_env: str = TOKEN_ENV,
                              timeout: float = 300.0, **_verl_extras) -> dict:
    """`compute_score` as a coroutine, awaited on verl's reward loop."""
    prompt = prompt_of(extra_info, prompt_key)
    url = url or os.environ.get("RLAIF_REWARD_URL")
    if url:
        return (await asyncio.to_thread(post_score, url, [prompt], [solution_str], token_env, timeout))[0]
    return _result(await judge_from_env().ascore(prompt, solution_str))


__all__ = ["compute_score", "compute_score_async", "prompt_of", "post_score"]
