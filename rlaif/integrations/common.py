"""What the integrations share: the judge a process builds from environment variables, one
background event loop for callers that arrive on plain threads, and a reply's text.

Environment (read by `judge_from_env`; the OpenRLHF reward file and verl's in-process mode use it):

    RLAIF_JUDGE          model spec of the judge (default embedded:smollm2-135m-instruct)
    RLAIF_CONSTITUTION   constitution name or YAML path (default harmless)
    RLAIF_JUDGE_DEVICE   auto, cpu, cuda, cuda:N (default auto)
    RLAIF_JUDGE_BATCH    requests per engine batch (default: the engine's)
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Awaitable

from rlaif.config import DEFAULT_MODEL
from rlaif.errors import UserError

DEFAULT_JUDGE = DEFAULT_MODEL  # the judge when neither the call nor RLAIF_JUDGE names one

_judges: dict[tuple, Any] = {}
_judges_lock = threading.Lock()


def make_judge(spec: str = DEFAULT_JUDGE, constitution: str = "harmless", device: str | None = None,
               batch_size: int | None = None, config=None):
    """A Judge over a freshly loaded engine (`spec` as on the command line)."""
    from rlaif.backends import load_engine
    from rlaif.config import EngineConfig, parse_model_spec
    from rlaif.judge import Judge, JudgeConfig

    base = EngineConfig(**{k: v for k, v in (("device", device), ("batch_size", batch_size)) if v is not None})
    engine = load_engine(parse_model_spec(spec, base))
    try:
        return Judge(engine, constitution, config or JudgeConfig())
    except BaseException:
        engine.close()
        raise


def judge_from_env(environ=None):
    """The process's judge as the environment names it; built once, shared by every caller."""
    env = os.environ if environ is None else environ
    spec = env.get("RLAIF_JUDGE") or DEFAULT_JUDGE
    constitution = env.get("RLAIF_CONSTITUTION") or "harmless"
    device = env.get("RLAIF_JUDGE_DEVICE") or None
    batch = env.get("RLAIF_JUDGE_BATCH") or None
    if batch is not None:
        try:
            batch = int(batch)
            if batch <= 0:
                raise ValueError
        except ValueError:
            raise UserError(f"RLAIF_JUDGE_BATCH={env['RLAIF_JUDGE_BATCH']!r}: expected a positive whole "
                            "number") from None
    key = (spec, constitution, device, batch)
    with _judges_lock:
        if key not in _judges:
            _judges[key] = make_judge(spec, constitution, device, batch)
        return _judges[key]


class BackgroundLoop:
    """An event loop on a daemon thread. `run(coro)` from any plain thread blocks until the
    coroutine is done; calls from many threads at once share the loop, so the judge's
    micro-batcher sees them together and sends them to the engine as one batch."""

    def __init__(self):
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="rlaif-reward-loop", daemon=True).start()
                self._loop = loop
            return self._loop

    def run(self, coro: Awaitable):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise RuntimeError("BackgroundLoop.run blocks; from a coroutine, await the judge's async method instead")
        return asyncio.run_coroutine_threadsafe(coro, self._ensure()).result()


_background = BackgroundLoop()


def run_in_background(coro: Awaitable):
    """`coro`'s result, computed on the shared background loop (see BackgroundLoop)."""
    return _background.run(coro)


def message_text(content) -> str:
    """A message's content as text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    raise UserError(f"message content: expected text or a list of content parts, got {type(content).__name__}")


def reply_text(completion) -> str:
    """A completion as the reply text the judge reads: a string as it is; chat messages (TRL's
    conversational completions) as the text of their assistant turns, joined by blank lines."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, list) and all(isinstance(m, dict) for m in completion):
        turns = [message_text(m.get("content", "")) for m in completion if m.get("role", "assistant") == "assistant"]
        return "\n\n".join(t for t in turns if t)
    raise UserError(f"completion: expected text or a list of chat messages, got {type(completion).__name__}")


__all__ = ["DEFAULT_JUDGE", "make_judge", "judge_from_env", "BackgroundLoop", "run_in_background", "message_text",
           "reply_text"]
