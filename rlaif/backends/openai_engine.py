"""The `openai` engine: any OpenAI-compatible chat server (OpenAI, a vLLM server, llama.cpp, Ollama).

One `AsyncOpenAI` client and one event loop per engine; a batch fans out as one HTTP request per
prompt, at most `concurrency` in flight. The client's own retries are off (`max_retries=0`); every
attempt goes through tenacity here instead, so retries are counted and bounded in one place:

- retried: 408/409/425/429 and 5xx, timeouts, dropped or refused connections, bodies that are not
  the JSON a chat completion should be (malformed, truncated). The wait is exponential backoff with
  full jitter, except that a `Retry-After` header (seconds or an HTTP date; `retry-after-ms` too)
  is waited out in full (capped at `retry_after_max`).
- not retried: any other 4xx (400, 401, 403, 404, 422, ...) -> `EngineError`, one sentence naming the
  server; the run stops with exit code 2.
- out of budget (`max_retries` retries after the first try) -> `RequestFailed(reason, attempts)`;
  the runner writes that record to failures.jsonl and goes on.
- an unreachable server: while no request has ever reached the server, "connection refused" (or an
  unknown host) is tried only `connect_attempts` times (default 3, ~1 s in all) and then raised as
  `EngineError("... cannot connect ...")` naming the URL. Once the server has answered once, a
  refused connection is an ordinary retryable fault (a server restarting).

Option scoring asks for one token with `logprobs=True, top_logprobs=k` at temperature 0. Chat APIs
cannot prefill the assistant turn, so `OptionRequest.prefill` goes at the end of the last user
message. An option's log-probability is the log of the summed probabilities of every listed token
that is the option once stripped of whitespace ("A", " A", "A\\n"; not "(A" or "a"). An option
absent from the list gets a floor, log(min listed probability / 2), and is named in `floored`.

The API key is read from the environment variable `api_key_env` and handed to the client only; it is
never logged, never put into an error message, `stats()` or `repr()`. A local server that needs no
key gets the placeholder "not-needed".
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any, Sequence
from urllib.parse import urlsplit, urlunsplit

from rlaif.backends.base import Completion, GenerationRequest, OptionLogprobs, OptionRequest
from rlaif.config import EngineConfig
from rlaif.errors import EngineError, RequestFailed

RETRY_STATUS = {408, 409, 425, 429}
OPENAI_URL = "https://api.openai.com/v1"


class _Transient(Exception):
    """A failed attempt worth retrying. `kind` is what the stats count ("429", "timeout", ...)."""

    def __init__(self, kind: str, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.retry_after = retry_after


class OpenAIEngine:
    name = "openai"

    def __init__(self, cfg: EngineConfig, *, backoff_initial: float = 1.0, backoff_max: float = 30.0,
                 retry_after_max: float = 60.0, connect_attempts: int = 3):
        try:
            import openai  # noqa: F401
            import tenacity  # noqa: F401
        except ImportError as e:
            raise EngineError(f"the openai engine needs the '{e.name}' package: pip install openai tenacity") from None
        self.cfg = cfg
        self.model = cfg.model
        if not cfg.model:
            raise EngineError("openai engine: no model name given; use openai:MODEL or engine.model")
        self.base_url = cfg.base_url or OPENAI_URL
        self.url = _display_url(self.base_url)
        self.key_env = cfg.api_key_env
        if cfg.base_url is None and not os.environ.get(self.key_env):
            raise EngineError(f"openai engine at {self.url}: no API key; set {self.key_env} "
                              "(or give engine.base_url for a local server)")
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self.connect_attempts = max(1, connect_attempts)
        self._loop = asyncio.new_event_loop()
        self._client = None
        self._sem: asyncio.Semaphore | None = None
        self._reached = False  # has any request ever got an HTTP answer from the server?
        self._closed = False
        self.counters: dict[str, Any] = {"requests": 0, "attempts": 0, "retries": 0, "failures": 0,
                                         "prompt_tokens": 0, "completion_tokens": 0,
                                         "options_floored": 0, "seconds": 0.0}
        self.retry_reasons: Counter = Counter()

    def __repr__(self) -> str:
        return f"OpenAIEngine(model={self.model!r}, base_url={self.url!r}, key_env={self.key_env!r})"

    # ------------------------------------------------------------------ protocol

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        return self._run_batch([self._generate_one(r) for r in requests])

    def option_logprobs(self, requests: Sequence[OptionRequest], options: Sequence[str]) -> list[OptionLogprobs]:
        options = list(options)
        if not options or any(not isinstance(o, str) or not o.strip() for o in options):
            raise EngineError(f"option_logprobs needs non-empty option strings, got {options!r}")
        return self._run_batch([self._options_one(r, options) for r in requests])

    def stats(self) -> dict:
        return {"engine": self.name, "model": self.model, "base_url": self.url,
                **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.counters.items()},
                "retry_reasons": dict(sorted(self.retry_reasons.items()))}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._client is not None:
                self._run_sync(self._client.close())
        except Exception:
            pass  # closing sockets of a server that is already gone
        finally:
            self._client = None
            self._loop.close()

    def __del__(self):  # best effort for engines nobody closed; close() is the real thing
        if not sys.is_finalizing() and not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:
                pass

    # ------------------------------------------------------------------ event loop

    def _run_batch(self, coros: list) -> list:
        if self._closed:
            for c in coros:
                c.close()
            raise EngineError(f"openai engine at {self.url} is closed")
        started = time.perf_counter()
        try:
            return self._run_sync(_gather_or_cancel(coros))
        finally:
            self.counters["requests"] += len(coros)
            self.counters["seconds"] += time.perf_counter() - started

    def _run_sync(self, coro):
        """Run a coroutine on the engine's own loop. If this thread already runs a loop (a notebook,
        or another engine being garbage-collected inside its batch), run ours in a worker thread."""
        try:
            asyncio.get_running_loop()
            in_loop = True
        except RuntimeError:
            in_loop = False
        if not in_loop:
            return self._loop.run_until_complete(coro)
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(self._loop.run_until_complete, coro).result()

    def _get_client(self):
        if self._client is None:
            import openai

            self._client = openai.AsyncOpenAI(
                base_url=self.base_url, api_key=os.environ.get(self.key_env) or "not-needed",
                max_retries=0, timeout=self.cfg.timeout)
            self._sem = asyncio.Semaphore(self.cfg.concurrency)
        return self._client

    # ------------------------------------------------------------------ one request, with retries

    async def _create(self, kwargs: dict):
        """One chat completion, retried as the module docstring says. Returns the parsed response."""
        from tenacity import AsyncRetrying, RetryError, retry_if_exception_type, wait_random_exponential

        jitter = wait_random_exponential(multiplier=self.backoff_initial, max=self.backoff_max)

        def wait(state) -> float:
            exc = state.outcome.exception()
            if isinstance(exc, _Transient) and exc.retry_after is not None:
                return min(exc.retry_after, self.retry_after_max)
            if isinstance(exc, _Transient) and exc.kind == "connect" and not self._reached:
                return 0.3 * state.attempt_number
            return jitter(state)

        def stop(state) -> bool:
            if state.attempt_number >= self.cfg.max_retries + 1:
                return True
            exc = state.outcome.exception()
            return (isinstance(exc, _Transient) and exc.kind == "connect" and not self._reached
                    and state.attempt_number >= self.connect_attempts)

        def before_sleep(state) -> None:
            exc = state.outcome.exception()
            self.counters["retries"] += 1
            self.retry_reasons[getattr(exc, "kind", type(exc).__name__)] += 1

        retrying = AsyncRetrying(stop=stop, wait=wait, retry=retry_if_exception_type(_Transient),
                                 before_sleep=before_sleep, reraise=False)
        try:
            return await retrying(self._attempt, kwargs)
        except RetryError as e:
            exc = e.last_attempt.exception()
            attempts = e.last_attempt.attempt_number
            if isinstance(exc, _Transient) and exc.kind == "connect" and not self._reached:
                raise EngineError(f"openai engine at {self.url}: {exc.reason} after {attempts} tries; "
                                  "is the server running and is base_url right?") from None
            self.counters["failures"] += 1
            reason = exc.reason if isinstance(exc, _Transient) else type(exc).__name__
            raise RequestFailed(f"openai engine at {self.url}: gave up after {attempts} attempts; "
                                f"last error: {reason}", attempts) from None

    async def _attempt(self, kwargs: dict):
        import openai
        import pydantic

        client = self._get_client()
        async with self._sem:
            self.counters["attempts"] += 1
            try:
                resp = await client.chat.completions.create(**kwargs)
            except openai.APITimeoutError:
                raise _Transient("timeout", f"no response within {self.cfg.timeout:g} s") from None
            except openai.APIConnectionError as e:
                cause = _root_cause(e)
                if _is_connect_failure(e):
                    refused = any(isinstance(x, ConnectionRefusedError) for x in _everything(e))
                    what = "connection refused" if refused else _describe(cause)
                    raise _Transient("connect", f"cannot connect ({what})") from None
                raise _Transient(_connection_kind(cause), f"connection error ({_describe(cause)})") from None
            except openai.APIStatusError as e:
                self._reached = True
                status = e.status_code
                if status in RETRY_STATUS or status >= 500:
                    raise _Transient(str(status), _status_line(status),
                                     _retry_after(e.response.headers)) from None
                raise self._fatal(e) from None
            except (json.JSONDecodeError, pydantic.ValidationError, openai.APIResponseValidationError):
                self._reached = True
                raise _Transient("malformed", "the response body was not valid JSON") from None
        self._reached = True
        choices = getattr(resp, "choices", None)
        if not isinstance(choices, list) or not choices or any(
                getattr(c, "message", None) is None for c in choices):
            raise _Transient("malformed", "the response had no choices with a message")
        return resp

    def _fatal(self, e) -> EngineError:
        status = e.status_code
        head = f"openai engine at {self.url}: {_status_line(status)}"
        if status == 401:
            hint = (f"set {self.key_env} to a valid key" if os.environ.get(self.key_env)
                    else f"set {self.key_env} (it is not set)")
            return EngineError(f"{head} — {hint}")
        if status == 403:
            return EngineError(f"{head} — the key in {self.key_env} may not use model {self.model!r}")
        detail = self._scrub(_server_message(e))
        if status == 404:
            return EngineError(f"{head} — check base_url (it usually ends in /v1) and that the server "
                               f"serves model {self.model!r}" + (f" ({detail})" if detail else ""))
        return EngineError(f"{head}" + (f": {detail}" if detail else ""))

    def _scrub(self, text: str) -> str:
        key = os.environ.get(self.key_env)
        if key and len(key) >= 4:
            text = text.replace(key, "***")
        return text[:300]

    # ------------------------------------------------------------------ messages

    def _chat(self, messages: list[dict]) -> list[dict]:
        chat = [dict(m) for m in messages]
        if self.cfg.system_prompt and not (chat and chat[0].get("role") == "system"):
            chat.insert(0, {"role": "system", "content": self.cfg.system_prompt})
        return chat

    async def _generate_one(self, r: GenerationRequest) -> Completion:
        texts: list[str] = []
        reasons: list[str] = []
        prompt_tokens = completion_tokens = 0
        chat = self._chat(r.messages)
        # Some servers (llama.cpp) ignore `n`; ask again for what is missing.
        while len(texts) < r.n:
            want = r.n - len(texts)
            kwargs: dict[str, Any] = dict(model=self.model, messages=chat, temperature=r.temperature,
                                          max_tokens=r.max_tokens, top_p=r.top_p)
            if want > 1:
                kwargs["n"] = want
            if r.seed is not None:
                kwargs["seed"] = r.seed + len(texts)
            if r.stop:
                kwargs["stop"] = list(r.stop)
            resp = await self._create(kwargs)
            for c in sorted(resp.choices, key=lambda c: c.index or 0)[:want]:
                texts.append((c.message.content or "").strip())
                reasons.append(c.finish_reason or "")
            usage = getattr(resp, "usage", None)
            if usage is not None:
                prompt_tokens = prompt_tokens or (usage.prompt_tokens or 0)
                completion_tokens += usage.completion_tokens or 0
        self.counters["prompt_tokens"] += prompt_tokens
        self.counters["completion_tokens"] += completion_tokens
        return Completion(texts, prompt_tokens, completion_tokens, reasons)

    async def _options_one(self, r: OptionRequest, options: list[str]) -> OptionLogprobs:
        chat = self._chat(r.messages)
        if r.prefill:
            chat = _append_to_last_user(chat, r.prefill)
        resp = await self._create(dict(model=self.model, messages=chat, max_tokens=1, temperature=0.0,
                                       logprobs=True, top_logprobs=self.cfg.top_logprobs))
        usage = getattr(resp, "usage", None)
        if usage is not None:
            self.counters["prompt_tokens"] += usage.prompt_tokens or 0
        listed = _listed_logprobs(resp.choices[0])
        if not listed:
            raise EngineError(f"openai engine at {self.url}: the server returned no logprobs for model "
                              f"{self.model!r}; option scoring needs a server that supports "
                              "logprobs/top_logprobs on chat completions (OpenAI, vLLM, llama-cpp-python)")
        result = score_options(listed, options)
        self.counters["options_floored"] += len(result.floored)
        return result


# ---------------------------------------------------------------------- pure helpers


def score_options(listed: dict[str, float], options: Sequence[str]) -> OptionLogprobs:
    """Sum the probabilities of every listed token that strips to the option; floor the absent ones
    at log(min listed probability) - log 2."""
    floor = min(listed.values()) - math.log(2)
    values, floored = {}, []
    for option in options:
        hits = [lp for tok, lp in listed.items() if tok.strip() == option.strip()]
        if hits:
            top = max(hits)
            values[option] = top + math.log(sum(math.exp(lp - top) for lp in hits))
        else:
            values[option] = floor
            floored.append(option)
    return OptionLogprobs(values, floored)


def _listed_logprobs(choice) -> dict[str, float]:
    """token -> logprob for the first generated position: its top_logprobs plus the sampled token."""
    lp = getattr(choice, "logprobs", None)
    content = getattr(lp, "content", None) if lp is not None else None
    if not content:
        return {}
    first = content[0]
    listed: dict[str, float] = {}
    for item in list(getattr(first, "top_logprobs", None) or []) + [first]:
        token, value = getattr(item, "token", None), getattr(item, "logprob", None)
        if isinstance(token, str) and isinstance(value, (int, float)) and math.isfinite(value):
            listed.setdefault(token, float(value))
    return listed


def _append_to_last_user(chat: list[dict], prefill: str) -> list[dict]:
    for i in range(len(chat) - 1, -1, -1):
        if chat[i].get("role") == "user":
            content = chat[i].get("content") or ""
            sep = "" if not content or content[-1].isspace() else "\n\n"
            chat[i] = {**chat[i], "content": content + sep + prefill}
            return chat
    return chat + [{"role": "user", "content": prefill}]


async def _gather_or_cancel(coros: list) -> list:
    """Run all; on the first failure cancel the rest so nothing is left pending in the loop."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _retry_after(headers) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def _server_message(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        msg = err.get("message") if isinstance(err, dict) else err
        if isinstance(msg, str):
            return " ".join(msg.split())
    return ""


def _chain(e: BaseException | None):
    """An exception and what caused it, outermost first (as a traceback would show them)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ if e.__cause__ is not None else (None if e.__suppress_context__ else e.__context__)


def _root_cause(e: BaseException) -> BaseException:
    return list(_chain(e))[-1]


def _everything(e: BaseException | None):
    """Every exception reachable through causes, contexts and exception groups (for detection)."""
    stack, seen = [e], set()
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        stack.extend([x.__cause__, x.__context__, *getattr(x, "exceptions", ())])


def _is_connect_failure(e: BaseException) -> bool:
    """Refused connection or unknown host: nothing listens there (as opposed to a dropped one)."""
    import socket

    for x in _everything(e):
        if isinstance(x, (ConnectionRefusedError, socket.gaierror)) or type(x).__name__ == "ConnectError":
            return True
    return False


def _connection_kind(e: BaseException) -> str:
    """Name a broken exchange for the stats: a body cut short, a connection dropped, or other."""
    text = str(e).lower()
    if "complete message body" in text or "incomplete" in text:
        return "truncated"
    if "without sending a response" in text or "disconnected" in text or "reset" in text:
        return "dropped"
    return "connection"


def _describe(e: BaseException) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    text = " ".join(str(e).split())
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    return f"{type(e).__name__}: {text}"[:160] if text else type(e).__name__


def _display_url(url: str) -> str:
    """The URL without any user:password part."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url


__all__ = ["OpenAIEngine", "score_options"]
