"""How the `openai` engine talks to its server: `OpenAITransport`, which `OpenAIEngine` builds on.

One `AsyncOpenAI` client on one event loop that runs in the engine's own thread, so calls may come
from several threads at once (the runner's per-record replay); a batch fans out as one HTTP request
per prompt, at most `concurrency` in flight. The client's own retries are off (`max_retries=0`);
every attempt goes through tenacity here instead, so retries are counted and bounded in one place.
Which answers are retried follows openai-python's `_should_retry`:

- an `x-should-retry` response header is obeyed first: `true` retries even a 4xx, `false` retries
  nothing, not even a 5xx;
- retried: 408/409/425/429 and 5xx, timeouts, dropped or refused connections, bodies that are not
  the JSON a completion should be (malformed, truncated). The wait is exponential backoff with full
  jitter, except that a `Retry-After` header (seconds or an HTTP date; `retry-after-ms` too) is
  waited out in full (capped at `retry_after_max`).
- fatal, the run stops at once with one line (`EngineError`, exit code 2): 401/403 (the key), 404
  (the URL or the model name), 402/405, and a server nothing listens on: while no request has ever
  reached it, "connection refused" (or an unknown host) is tried `connect_attempts` times (~1 s)
  and then named. Requests not yet sent are never sent after a fatal answer.
- one record's problem -> `RequestFailed(reason, attempts)`, and the runner writes that record to
  failures.jsonl while the rest go on: any other 4xx (an over-long prompt, a content filter's
  refusal of red-team text) after one attempt, or a retryable fault after `max_retries` retries.
  Unless nothing has ever succeeded and the first `refusals_before_fatal` requests were all refused:
  then it is the request itself (a parameter this model rejects), and that is fatal.

A failed batch keeps its other answers: when a call raises `RequestFailed`, the answers of its other
requests (and the failure itself) are held, each to be handed out once, so the runner's per-record
replay of that batch sends nothing twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections import Counter, OrderedDict
from typing import Any

from rlaif.backends.http_faults import (
    connection_kind, describe, display_url, exception_tree, is_connect_failure, retry_after, root_cause,
    server_message, status_line,
)
from rlaif.config import EngineConfig
from rlaif.errors import EngineError, RequestFailed

RETRY_STATUS = {408, 409, 425, 429}
FATAL_STATUS = {401, 402, 403, 404, 405}
OPENAI_URL = "https://api.openai.com/v1"
KEEP = 4096  # answers held for a replay, at most (oldest dropped first)


class _Transient(Exception):
    """A failed attempt worth retrying. `kind` is what the stats count ("429", "timeout", ...)."""

    def __init__(self, kind: str, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.retry_after = retry_after


class OpenAITransport:
    """One request at a time, reliably, for the engine above it: the client on its own loop, the
    batch fan-out, retries, what each failure means, and the answers kept for a replay. Its
    counters are the engine's (`stats()`)."""

    def __init__(self, cfg: EngineConfig, *, backoff_initial: float, backoff_max: float, retry_after_max: float,
                 connect_attempts: int, refusals_before_fatal: int):
        self.cfg = cfg
        self.model = cfg.model
        self.base_url = cfg.base_url or OPENAI_URL
        self.url = display_url(self.base_url)
        self.key_env = cfg.api_key_env
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self.connect_attempts = max(1, connect_attempts)
        self.refusals_before_fatal = max(1, refusals_before_fatal)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._client = None
        self._sem: asyncio.Semaphore | None = None
        self._reached = False  # has any request ever got an HTTP answer from the server?
        self._succeeded = False  # ... and a good one?
        self._refusals = 0  # 4xx refusals in a row while nothing has succeeded
        self._fatal_error: EngineError | None = None  # once set, nothing more is sent
        self._kept: OrderedDict[str, Any] = OrderedDict()  # request key -> answer, for a replay
        self._kept_failed: OrderedDict[str, RequestFailed] = OrderedDict()
        self._closed = False
        self.counters: dict[str, Any] = {"requests": 0, "attempts": 0, "retries": 0, "failures": 0,
                                         "prompt_tokens": 0, "completion_tokens": 0,
                                         "options_floored": 0, "seconds": 0.0}
        self.retry_reasons: Counter = Counter()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        try:
            if self._client is not None and thread is not threading.current_thread():
                asyncio.run_coroutine_threadsafe(self._client.close(), loop).result(timeout=10)
        except Exception:
            pass  # closing sockets of a server that is already gone
        finally:
            self._client = None
            loop.call_soon_threadsafe(loop.stop)
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=10)
            if not loop.is_running():
                loop.close()

    def __del__(self):  # best effort for engines nobody closed; close() is the real thing
        if not sys.is_finalizing() and not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:
                pass

    # ------------------------------------------------------------------ the engine's event loop

    def _run(self, coro):
        """Run a coroutine on the engine's loop (its own thread) and wait for it; callable from any
        thread. Interrupted (Ctrl-C), the coroutine is cancelled with everything it started."""
        if self._closed:
            coro.close()
            raise EngineError(f"openai engine at {self.url} is closed")
        with self._start_lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                                name=f"openai-engine-{self.model}")
                self._thread.start()
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def _get_client(self):
        if self._client is None:
            import openai

            self._client = openai.AsyncOpenAI(
                base_url=self.base_url, api_key=os.environ.get(self.key_env) or "not-needed",
                max_retries=0, timeout=self.cfg.timeout)
            self._sem = asyncio.Semaphore(self.cfg.concurrency)
        return self._client

    async def _batch(self, one, requests: list, *args) -> list:
        """`one(request, *args, fresh)` for every request, at once. A fatal error cancels the rest and
        is raised at once. A `RequestFailed` lets the others finish; their answers (and the failures)
        are kept for the replay (see the module docstring) and the first failure is raised."""
        started = time.perf_counter()
        fresh: dict[str, Any] = {}  # request key -> what this call got from the server (answer or RequestFailed)
        tasks = [asyncio.ensure_future(one(r, *args, fresh)) for r in requests]
        try:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                for t in done:
                    if not t.cancelled() and t.exception() is not None and not isinstance(t.exception(), RequestFailed):
                        raise t.exception()
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            self.counters["requests"] += len(requests)
            self.counters["seconds"] += time.perf_counter() - started
        failed = [t.exception() for t in tasks if t.exception() is not None]
        if not failed:
            return [t.result() for t in tasks]
        if len(requests) > 1:  # a call of one request has nothing finer to be replayed as
            for key, answer in fresh.items():
                self._keep(self._kept_failed if isinstance(answer, RequestFailed) else self._kept, key, answer)
        raise failed[0]

    @staticmethod
    def _keep(store: OrderedDict, key: str, value) -> None:
        store[key] = value
        while len(store) > KEEP:
            store.popitem(last=False)

    # ------------------------------------------------------------------ one request, with retries

    async def _create(self, route: str, kwargs: dict, fresh: dict):
        """One completion (`route` "chat" or "completions"), retried as the module docstring says;
        the parsed response. An answer or failure kept from a failed batch is handed out first."""
        key = json.dumps([route, kwargs], sort_keys=True, default=str)
        if key in self._kept_failed:
            raise self._kept_failed.pop(key)
        if key in self._kept:
            return self._kept.pop(key)
        try:
            answer = await self._retrying(route, kwargs)
        except RequestFailed as e:
            fresh[key] = e
            raise
        fresh[key] = answer
        return answer

    async def _retrying(self, route: str, kwargs: dict):
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
            return await retrying(self._attempt, route, kwargs)
        except RetryError as e:
            exc = e.last_attempt.exception()
            attempts = e.last_attempt.attempt_number
            if isinstance(exc, _Transient) and exc.kind == "connect" and not self._reached:
                raise self._stop_everything(EngineError(
                    f"openai engine at {self.url}: {exc.reason} after {attempts} tries; "
                    "is the server running and is base_url right?")) from None
            self.counters["failures"] += 1
            reason = exc.reason if isinstance(exc, _Transient) else type(exc).__name__
            raise RequestFailed(f"openai engine at {self.url}: gave up after {attempts} attempts; "
                                f"last error: {reason}", attempts) from None

    async def _attempt(self, route: str, kwargs: dict):
        import openai
        import pydantic

        client = self._get_client()
        async with self._sem:
            if self._fatal_error is not None:  # another request's answer stopped the run
                raise EngineError(str(self._fatal_error))
            self.counters["attempts"] += 1
            create = client.chat.completions.create if route == "chat" else client.completions.create
            try:
                resp = await create(**kwargs)
            except openai.APITimeoutError:
                raise _Transient("timeout", f"no response within {self.cfg.timeout:g} s") from None
            except openai.APIConnectionError as e:
                cause = root_cause(e)
                if is_connect_failure(e):
                    refused = any(isinstance(x, ConnectionRefusedError) for x in exception_tree(e))
                    what = "connection refused" if refused else describe(cause)
                    raise _Transient("connect", f"cannot connect ({what})") from None
                raise _Transient(connection_kind(cause), f"connection error ({describe(cause)})") from None
            except openai.APIStatusError as e:
                self._reached = True
                raise self._status_error(e) from None
            except (json.JSONDecodeError, pydantic.ValidationError, openai.APIResponseValidationError):
                self._reached = True
                raise _Transient("malformed", "the response body was not valid JSON") from None
        self._reached = True
        choices = getattr(resp, "choices", None)
        part = "message" if route == "chat" else "text"
        if not isinstance(choices, list) or not choices or any(getattr(c, part, None) is None for c in choices):
            raise _Transient("malformed", f"the response had no choices with a {part}")
        self._succeeded = True
        self._refusals = 0
        return resp

    def _status_error(self, e) -> Exception:
        """What an HTTP error answer means: retry it, fail this request, or stop everything."""
        status = e.status_code
        should = (e.response.headers.get("x-should-retry") if e.response is not None else None)
        if should == "true" or (should != "false" and (status in RETRY_STATUS or status >= 500)):
            return _Transient(str(status), status_line(status), retry_after(e.response.headers))
        if status in FATAL_STATUS:
            return self._stop_everything(self._fatal(e))
        detail = self._scrub(server_message(e))
        said = f"{status_line(status)}" + (f": {detail}" if detail else "")
        if not self._succeeded:
            self._refusals += 1
            if self._refusals >= self.refusals_before_fatal:
                return self._stop_everything(EngineError(
                    f"openai engine at {self.url}: the first {self._refusals} requests were all refused and none "
                    f"succeeded, so the requests themselves are wrong for model {self.model!r}, not one record: {said}"))
        self.counters["failures"] += 1
        told = " (x-should-retry: false)" if should == "false" else ""
        return RequestFailed(f"openai engine at {self.url}: {said}{told}", 1)

    def _stop_everything(self, error: EngineError) -> EngineError:
        if self._fatal_error is None:
            self._fatal_error = error
        return self._fatal_error

    def _fatal(self, e) -> EngineError:
        status = e.status_code
        head = f"openai engine at {self.url}: {status_line(status)}"
        if status == 401:
            hint = (f"set {self.key_env} to a valid key" if os.environ.get(self.key_env)
                    else f"set {self.key_env} (it is not set)")
            return EngineError(f"{head} — {hint}")
        if status == 403:
            return EngineError(f"{head} — the key in {self.key_env} may not use model {self.model!r}")
        detail = self._scrub(server_message(e))
        if status == 404:
            return EngineError(f"{head} — check base_url (it usually ends in /v1) and that the server "
                               f"serves model {self.model!r}" + (f" ({detail})" if detail else ""))
        return EngineError(f"{head}" + (f": {detail}" if detail else ""))

    def _scrub(self, text: str) -> str:
        key = os.environ.get(self.key_env)
        if key and len(key) >= 4:
            text = text.replace(key, "***")
        return text[:300]


__all__ = ["OpenAITransport", "RETRY_STATUS", "FATAL_STATUS", "OPENAI_URL", "KEEP"]
