"""Error types the CLI turns into one clear line and an exit code.

`UserError` is anything the person running `rlaif` can fix (a bad file, a bad flag, an unreachable
endpoint): the CLI prints its message and exits 2. `RequestFailed` is one request that an engine
could not complete within its retry budget; the runner records it in `failures.jsonl`.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the input or the environment, explained in one sentence. Exit code 2."""


class EngineError(UserError):
    """An engine could not be loaded or reached (unknown model, unreachable endpoint, bad key)."""


class RequestFailed(Exception):
    """One request failed after its retry budget; `reason` says why, `attempts` how often it was tried."""

    def __init__(self, reason: str, attempts: int = 1):
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts


class GateFailed(Exception):
    """A quality gate tripped (e.g. the judge audit's): its message is the line(s) to print, and the
    command exits 1 — the run worked, and what it measured is not good enough to go on."""
