"""Shared pieces of the issue-8 reliability and security tests: real `rlaif` subprocesses, killing
them at a seeded moment, reading outputs, hashing output folders, checking one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from testkit import ROOT

# tqdm progress lines ("responses:  50%|#####     | 12/24 ...") are not messages
PROGRESS = re.compile(r"^\s*[\w-]+:\s+\d+%\|")
LOCK = ".rlaif.lock"  # holds the pid of the last writer; not an output


def rlaif_argv(*args) -> list[str]:
    return [sys.executable, "-m", "rlaif.cli", *map(str, args)]


def default_sigint(then=None):
    """A preexec_fn: the child gets SIGINT's default action even when the test run itself was
    started in the background (`cmd &` makes the shell ignore SIGINT, and children inherit that),
    then runs `then`."""
    def preexec():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if then:
            then()
    return preexec


def spawn(*args, log: Path, env: dict | None = None, preexec_fn=None) -> subprocess.Popen:
    """Start `rlaif ARGS` in the background; stdout+stderr go to `log` (a pipe could fill up)."""
    f = open(log, "wb")
    try:
        return subprocess.Popen(rlaif_argv(*args), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, preexec_fn=default_sigint(preexec_fn))
    finally:
        f.close()


def run(*args, env: dict | None = None, timeout: float = 300, preexec_fn=None) -> subprocess.CompletedProcess:
    return subprocess.run(rlaif_argv(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, preexec_fn=preexec_fn)


def in_process(capsys, *args) -> subprocess.CompletedProcess:
    """`rlaif ARGS` through `rlaif.cli.main` in this process: the console script's code path."""
    from rlaif.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)


def message_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip() and not PROGRESS.match(ln)]


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """Exit code 2, no traceback, exactly one `rlaif: error: ...` line on stderr; returns it."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    lines = message_lines(proc.stderr)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("rlaif: error: "), proc.stderr[-2000:]
    return lines[0]


def line_count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def whole_records(path: Path) -> list[dict]:
    """What a killed run left: every complete line must parse; a torn last line is allowed."""
    if not path.exists():
        return []
    data = path.read_bytes()
    complete, _, tail = data.rpartition(b"\n")
    out = [json.loads(x) for x in complete.split(b"\n") if x.strip()] if complete else []
    if tail.strip():  # a torn tail must not parse as a whole record by accident
        try:
            json.loads(tail)
        except ValueError:
            pass
        else:
            out.append(None)  # whole JSON without its newline: the reader keeps it
    return out


def kill_at(proc: subprocess.Popen, path: Path, target: int, extra_delay: float, sig=signal.SIGKILL,
            timeout: float = 240) -> None:
    """Send `sig` once `path` holds `target` lines (then wait `extra_delay` more, so the signal lands
    at an arbitrary point of the next batch: mid-forward, mid-write, mid-manifest)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if line_count(path) >= target:
            break
        time.sleep(0.003)
    if extra_delay:
        time.sleep(extra_delay)
    if not sig:  # 0: only wait for the target
        return
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(timeout=60)


def tree_hash(folder: Path) -> dict[str, str]:
    """Every file under `folder` -> sha256 (the lock file, which holds a pid, left out)."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != LOCK:
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_prompts(path: Path, n: int, words: int = 6) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"Question {i}: " + " ".join(f"w{i}x{j}" for j in range(words))})
                            + "\n" for i in range(n)), encoding="utf-8")
    return path


def write_pairs(path: Path, n: int) -> Path:
    rows = [{"prompt": f"How do I fix problem number {i} in my garden?",
             "response_a": f"Water the plants early, number {i}, and check the soil.",
             "response_b": f"I cannot help with number {i}. " + "Try again later. " * (i % 3 + 1)}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_responses(path: Path, n: int) -> Path:
    rows = [{"prompt": f"Tell me about topic {i}.", "response": f"Topic {i} is about things. It is fine."}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
