"""What went wrong with an HTTP exchange, in words a person can act on: the wait a server asks for
(`Retry-After`), a status line, the server's own message, and whether a failed connection means
nothing listens there (refused, unknown host) or an exchange was cut (dropped, truncated).

Used by the openai engine; pure functions, no I/O.
"""

from __future__ import annotations

import email.utils
import time
from http import HTTPStatus
from urllib.parse import urlsplit, urlunsplit


def retry_after(headers) -> float | None:
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


def status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def server_message(e) -> str:
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


def root_cause(e: BaseException) -> BaseException:
    return list(_chain(e))[-1]


def exception_tree(e: BaseException | None):
    """Every exception reachable through causes, contexts and exception groups (for detection)."""
    stack, seen = [e], set()
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        stack.extend([x.__cause__, x.__context__, *getattr(x, "exceptions", ())])


def is_connect_failure(e: BaseException) -> bool:
    """Refused connection or unknown host: nothing listens there (as opposed to a dropped one)."""
    import socket

    for x in exception_tree(e):
        if isinstance(x, (ConnectionRefusedError, socket.gaierror)) or type(x).__name__ == "ConnectError":
            return True
    return False


def connection_kind(e: BaseException) -> str:
    """Name a broken exchange for the stats: a body cut short, a connection dropped, or other."""
    text = str(e).lower()
    if "complete message body" in text or "incomplete" in text:
        return "truncated"
    if "without sending a response" in text or "disconnected" in text or "reset" in text:
        return "dropped"
    return "connection"


def describe(e: BaseException) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    text = " ".join(str(e).split())
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    return f"{type(e).__name__}: {text}"[:160] if text else type(e).__name__


def display_url(url: str) -> str:
    """The URL without any user:password part."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url


__all__ = ["retry_after", "status_line", "server_message", "root_cause", "exception_tree", "is_connect_failure",
           "connection_kind", "describe", "display_url"]
