"""The judge as a TRL reward function (`trl.GRPOTrainer(reward_funcs=...)`, also RLOO).

TRL 1.16 calls a reward function as `f(prompts=, completions=, completion_ids=, **columns,
trainer_state=, log_extra=, log_metric=)` (trl/trainer/grpo_trainer.py, `_calculate_rewards`),
one entry per completion, and wants one float per completion back; None becomes NaN, which TRL
reads as "this function does not score that completion". Prompts and completions are plain text,
or chat messages when the dataset is conversational. A callable whose `__call__` is a coroutine
function is awaited on the trainer's own event loop, next to the other async reward functions.
TRL logs a function under its `__name__` (`rewards/<name>/mean`).

    reward = judge_reward(judge, mode="direct")                   # each reply's (E[k] - 1) / 9
    reward = judge_reward(judge, mode="pairwise")                 # mean p(beats each other reply of its group)
    reward = judge_reward(judge, mode="reference")                # p(beats the row's `reference` column)
    reward = judge_reward(judge, mode="pairwise", asynchronous=True)

Groups. TRL's sampler repeats each prompt `num_generations` times in a row, and each process
receives a contiguous slice, so a group is a run of equal consecutive prompts. When the same prompt
opens two groups in a row, the run is longer than `num_generations`: pass `num_generations` and
the run is cut into groups of that size. A group cut by a process boundary is judged as the part
this process holds; a one-reply group has nobody to compare with, so pairwise gives it None.
"""

from __future__ import annotations

from typing import Any, Sequence

from rlaif.errors import RequestFailed, UserError
from rlaif.integrations.common import reply_text

MODES = ("direct", "pairwise", "reference")


def groups_of(prompts: Sequence[Any], num_generations: int | None = None) -> list[list[int]]:
    """Indices of the completions that answer the same prompt, group by group: runs of equal
    consecutive prompts, each run cut into pieces of `num_generations` when it is given."""
    runs: list[list[int]] = []
    for i, p in enumerate(prompts):
        if runs and prompts[runs[-1][0]] == p:
            runs[-1].append(i)
        else:
            runs.append([i])
    if not num_generations:
        return runs
    return [run[k:k + num_generations] for run in runs for k in range(0, len(run), num_generations)]


class JudgeReward:
    """A TRL reward function backed by a Judge (build it with `judge_reward`)."""

    def __init__(self, judge, mode: str = "direct", *, num_generations: int | None = None,
                 reference_column: str = "reference", name: str | None = None, on_failure: str = "raise"):
        if mode not in MODES:
            raise UserError(f"judge reward: mode {mode!r}: expected one of {', '.join(MODES)}")
        if on_failure not in ("raise", "none"):
            raise UserError(f"judge reward: on_failure {on_failure!r}: expected raise or none")
        if num_generations is not None and (not isinstance(num_generations, int) or num_generations < 1):
            raise UserError(f"judge reward: num_generations {num_generations!r}: expected a positive whole number")
        self.judge, self.mode, self.num_generations = judge, mode, num_generations
        self.reference_column, self.on_failure = reference_column, on_failure
        self.__name__ = name or f"rlaif_judge_{mode}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.__name__}, judge={self.judge.name})"

    def _plan(self, prompts, completions, columns) -> tuple[list[list[int]], list, list, list | None]:
        """(groups, each group's prompt, each group's reply texts, each group's reference or None)."""
        if len(prompts) != len(completions):
            raise UserError(f"{self.__name__}: {len(prompts)} prompts and {len(completions)} completions; "
                            "expected one prompt per completion")
        texts = [reply_text(c) for c in completions]
        if self.mode == "direct":  # every reply on its own
            groups = [[i] for i in range(len(prompts))]
        else:
            groups = groups_of(prompts, self.num_generations)
        refs = None
        if self.mode == "reference":
            column = columns.get(self.reference_column)
            if column is None:
                raise UserError(f"{self.__name__}: mode reference reads the reference reply from the dataset column "
                                f"{self.reference_column!r}, which the batch does not have (columns: "
                                f"{', '.join(sorted(k for k in columns if k not in _TRL_EXTRAS)) or 'none'})")
            refs = [reply_text(column[g[0]]) for g in groups]
        return groups, [prompts[g[0]] for g in groups], [[texts[i] for i in g] for g in groups], refs

    def _spread(self, groups, values, n: int) -> list[float | None]:
        out: list[float | None] = [None] * n
        for g, vs in zip(groups, values):
            for i, v in zip(g, vs):
                out[i] = v
        return out

    def __call__(self, prompts, completions, completion_ids=None, **columns) -> list[float | None]:
        groups, gprompts, replies, refs = self._plan(prompts, completions, columns)
        failures = {} if self.on_failure == "none" else None
        values = self.judge.group_rewards_many(gprompts, replies, self.mode, refs, failures=failures)
        _log_failures(columns, self.__name__, failures, len(prompts))
        return self._spread(groups, values, len(prompts))


class AsyncJudgeReward(JudgeReward):
    """The same reward as a coroutine: TRL runs it on its event loop alongside other async reward
    functions, and concurrent calls (several reward functions, several trainers in one process)
    reach the engine together through the judge's micro-batcher."""

    async def __call__(self, prompts, completions, completion_ids=None, **columns) -> list[float | None]:
        groups, gprompts, replies, refs = self._plan(prompts, completions, columns)
        try:
            values = await self.judge.agroup_rewards_many(gprompts, replies, self.mode, refs)
        except RequestFailed as e:
            if self.on_failure == "raise":
                raise
            values = [[None] * len(r) for r in replies]
            _log_failures(columns, self.__name__, {(g, k): e.reason for g, r in enumerate(replies)
                                                   for k in range(len(r))}, len(prompts))
        return self._spread(groups, values, len(prompts))


_TRL_EXTRAS = ("trainer_state", "log_extra", "log_metric", "environments")


def _log_failures(columns: dict, name: str, failures: dict | None, n: int) -> None:
    log_metric = columns.get("log_metric")
    if failures is not None and callable(log_metric):
        log_metric(f"{name}/failed_frac", len(failures) / max(n, 1))


def judge_reward(judge, mode: str = "direct", *, asynchronous: bool = False, num_generations: int | None = None,
                 reference_column: str = "reference", name: str | None = None, on_failure: str = "raise",
                 constitution: str = "harmless") -> JudgeReward:
    """A TRL reward function over `judge` (a Judge, or a model spec such as
    "embedded:smollm2-135m-instruct", judged under `constitution`).

    mode: "direct" (each reply's score in [0, 1]), "pairwise" (round robin inside each group:
    the mean p of beating each other reply), "reference" (p of beating the reply in the dataset
    column `reference_column`). on_failure: "raise" stops training when the judge's engine fails
    for good; "none" gives the replies it could not judge None (NaN in TRL) and logs
    `<name>/failed_frac`."""
    if isinstance(judge, str):
        from rlaif.integrations.common import make_judge

        judge = make_judge(judge, constitution)
    cls = AsyncJudgeReward if asynchronous else JudgeReward
    return cls(judge, mode, num_generations=num_generations, reference_column=reference_column, name=name,
               on_failure=on_failure)


__all__ = ["judge_reward", "JudgeReward", "AsyncJudgeReward", "groups_of", "MODES"]
