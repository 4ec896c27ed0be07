"""`rlaif generate` as a real subprocess: bad inputs, kill -9 and resume, lock refusal."""

import json
import random
import signal
import subprocess
import sys
import time

import pytest

from rlaif.runner import OutputLock
from testkit import ROOT, run_cli


def cli_in_process(capsys, *args):
    """Call `rlaif` in this process (same code path as the console script, no interpreter start)."""
    from rlaif.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def one_clear_line(proc):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.lstrip().startswith(("responses:",))]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("rlaif: error: "), proc.stderr
    return lines[0]


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Question number {i}: what is {i} plus {i}?"}) + "\n"
                            for i in range(24)))
    return path


def test_bad_inputs_exit_2_with_one_line(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "fine"}\n{"prompt": "also fine"}\n{"prompt": oops}\n')
    no_field = tmp_path / "nofield.jsonl"
    no_field.write_text('{"text": "hi"}\n')
    cases = [
        (["--prompts", tmp_path / "missing.jsonl"], "missing.jsonl: no such file"),
        (["--prompts", empty], "empty.jsonl: no prompts"),
        (["--prompts", broken], "broken.jsonl:3: invalid JSON"),
        (["--prompts", no_field], "nofield.jsonl:1: expected a JSON object with a 'prompt' field"),
        (["--prompts", broken, "--model", "no-such-model-anywhere"], "broken.jsonl:3"),
        (["--prompts", no_field.parent / "prompts-none.txt"], "no such file"),
    ]
    for args, expected in cases:
        line = one_clear_line(cli_in_process(capsys, "generate", "--out", out, "--model", tiny_model_dir, *args))
        assert expected in line, line
    good = tmp_path / "good.txt"
    good.write_text("hello\n")
    line = one_clear_line(cli_in_process(capsys, "generate", "--prompts", good, "--out", out, "--model", "no-such-model-anywhere"))
    assert "no-such-model-anywhere" in line and "expected embedded:NAME" in line
    line = one_clear_line(cli_in_process(capsys, "generate", "--prompts", good, "--out", out, "--model", good))
    assert "is a file" in line
    assert not (out / "responses.jsonl").exists()


def test_second_run_on_a_locked_dir_is_refused(tmp_path, tiny_model_dir, prompts):
    out = tmp_path / "out"
    with OutputLock(out):
        line = one_clear_line(run_cli("generate", "--prompts", prompts, "--out", out, "--model", tiny_model_dir))
    assert "another rlaif run" in line


def _records(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.heavy
def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_model_dir, prompts, capsys):
    """The runs that get killed are real `rlaif generate` processes; the reference and the resumes
    go through `rlaif.cli.main` in this process (the console script's code path, without paying
    another interpreter start each)."""
    args = ["--prompts", prompts, "--model", tiny_model_dir, "--max-tokens", "24", "--temperature", "0.9",
            "--seed", "5", "--batch-size", "2", "--n", "2"]
    ref = cli_in_process(capsys, "generate", "--out", tmp_path / "ref", *args)
    assert ref.returncode == 0, ref.stderr
    expected = _records(tmp_path / "ref" / "responses.jsonl")
    assert len(expected) == 48 and len({r["id"] for r in expected}) == 48

    rng = random.Random(0)
    for trial in range(3):
        out = tmp_path / f"killed{trial}"
        path = out / "responses.jsonl"
        proc = subprocess.Popen([sys.executable, "-m", "rlaif.cli", "generate", "--out", str(out), *map(str, args)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = rng.randint(2, 40)  # kill once this many records are on disk
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if path.exists() and path.read_bytes().count(b"\n") >= target:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        partial = _records(path) if path.exists() else []
        assert len(partial) < 48, "the run finished before it could be killed"
        resumed = cli_in_process(capsys, "generate", "--out", out, *args)
        assert resumed.returncode == 0, resumed.stderr
        got = _records(path)
        assert [r["id"] for r in got] == [r["id"] for r in expected]
        assert got == expected
