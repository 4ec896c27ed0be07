"""Start `rlaif annotate serve` as a real process on a free port and talk to it over HTTP."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from testkit import ROOT, stop_process


def start_server(db: Path, *args, annotator: str = "alice", timeout: float = 30.0):
    """(process, base URL). The server prints its URL once the socket is bound."""
    proc = subprocess.Popen([sys.executable, "-m", "rlaif.cli", "annotate", "serve", "--db", str(db), "--port", "0",
                             "--annotator", annotator, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"serving on (http://127\.0\.0\.1:\d+)/", line)
        if found:
            base = found.group(1)
            wait_until_up(base)
            return proc, base
    proc.kill()
    raise AssertionError(f"the server did not start: {''.join(lines)} {proc.stderr.read()}")


def wait_until_up(base: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(base + "/api/progress?annotator=probe", timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def progress(base: str, annotator: str) -> dict:
    q = urllib.parse.urlencode({"annotator": annotator})
    return json.loads(urllib.request.urlopen(f"{base}/api/progress?{q}", timeout=10).read())


def current_pair(base: str, annotator: str) -> str | None:
    """The pair id on the annotator's page (None when they are done)."""
    q = urllib.parse.urlencode({"annotator": annotator})
    page = urllib.request.urlopen(f"{base}/?{q}", timeout=10).read().decode()
    found = re.search(r'name="pair_id" value="([0-9a-f]+)"', page)
    return found.group(1) if found else None


def post_label(base: str, annotator: str, pair_id: str, point: int | None = None, **fields) -> dict:
    """POST one label the way the form does; returns the progress the server reports."""
    form = {"annotator": annotator, "pair_id": pair_id, **({"point": point} if point else {}), **fields}
    req = urllib.request.Request(base + "/label", data=urllib.parse.urlencode(form).encode(), method="POST",
                                 headers={"Accept": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=30).read())


def stop(proc: subprocess.Popen) -> None:
    stop_process(proc, grace=10)
