"""Issue 8, crashes: real `rlaif` subprocesses (generate, label, critique) are SIGKILLed at a seeded
random moment and resumed; SIGINT stops cleanly; a full disk (a 64 KiB tmpfs, or RLIMIT_FSIZE) is a
clear error. Every trial must end with the output of an uninterrupted run with the same seed: no
record lost, none duplicated, no corrupt line, derived files identical.

References and resumes run in this process through `rlaif.cli.main` (the console script's code
path, without paying another interpreter start); the runs that get killed are real subprocesses.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import subprocess

import pytest

from rlaif.cli import build_parser, main
from reliability_helpers import (
    in_process, kill_at, message_lines, one_error_line, records, run, spawn, whole_records, write_pairs,
    write_prompts, write_responses,
)

pytestmark = pytest.mark.slow


def _has_command(name: str) -> bool:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return name in sub.choices


class Job:
    """One command line, its primary output file, the files derived from it, and a reference run."""

    def __init__(self, name, argv, output, derived, total):
        self.name, self.argv, self.output, self.derived, self.total = name, argv, output, derived, total
        self.ref = None

    def args(self, out):
        return [*self.argv, "--out", out]

    def reference(self, tmp):
        if self.ref is None:
            out = tmp / f"ref-{self.name}"
            assert main([str(a) for a in self.args(out)]) == 0
            self.ref = out
            got = records(out / self.output)
            assert len(got) == self.total and len({r["id"] for r in got}) == self.total
        return self.ref


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("crash")


@pytest.fixture(scope="module")
def jobs(work, tiny_model_dir):
    tiny = tiny_model_dir
    prompts = write_prompts(work / "prompts.jsonl", 8)
    pairs = write_pairs(work / "pairs.jsonl", 24)
    responses = write_responses(work / "responses_in.jsonl", 4)
    return {
        "generate": Job("generate", ["generate", "--prompts", prompts, "--model", tiny, "--max-tokens", 8,
                                     "--temperature", 0.9, "--seed", 3, "--batch-size", 2, "--n", 2],
                        "responses.jsonl", [], 16),
        "label": Job("label", ["label", "--pairs", pairs, "--model", tiny, "--batch-size", 1,
                               "--constitution", "harmless", "--seed", 1],
                     "labels.jsonl", ["preferences.jsonl"], 24),
        "critique": Job("critique", ["critique", "--responses", responses, "--constitution", "harmless",
                                     "--model", tiny, "--rounds", 1, "--critique-max-tokens", 6,
                                     "--revision-max-tokens", 6, "--batch-size", 1, "--few-shot", 0,
                                     "--seed", 2],
                        "chains.jsonl", ["sl_cai.jsonl", "revision_pairs.jsonl"], 4),
    }


def _check_partial(job, out, ref_records):
    """What the killed run left is whole lines, each equal to the reference's record for its id."""
    partial = whole_records(out / job.output)
    by_id = {r["id"]: r for r in ref_records}
    whole = [r for r in partial if r is not None]
    assert len(whole) == len({r["id"] for r in whole}), "duplicate ids in the partial output"
    for r in whole:
        assert r == by_id[r["id"]], "a record written before the kill differs from the reference"
    manifest = out / "manifest.json"
    if manifest.exists():
        json.loads(manifest.read_text())  # never half-written
    assert not [p for p in out.glob(".*.tmp")] if out.exists() else True
    return whole


def _check_resumed(job, out):
    expected = records(job.ref / job.output)
    got = records(out / job.output)
    assert [r["id"] for r in got] == [r["id"] for r in expected], "lost, duplicated or reordered records"
    assert got == expected
    for name in job.derived:
        assert (out / name).read_bytes() == (job.ref / name).read_bytes(), name
    assert not (out / "failures.jsonl").exists()


# (command, trials): 4 + 3 + 3 = 10 SIGKILL trials, each at a seeded random moment
# label and critique are killed under make test-heavy; generate under make test too
KILL_PLAN = [("generate", 4), pytest.param("label", 3, marks=pytest.mark.heavy),
             pytest.param("critique", 3, marks=pytest.mark.heavy)]


@pytest.mark.parametrize("name,trials", KILL_PLAN)
def test_sigkill_at_a_random_moment_then_resume_equals_uninterrupted(name, trials, jobs, work):
    if not _has_command(name):
        pytest.skip(f"`rlaif {name}` does not exist yet")
    job = jobs[name]
    job.reference(work)
    expected = records(job.ref / job.output)
    rng = random.Random(f"kill-{name}")
    interrupted = 0
    for trial in range(trials):
        out = work / f"kill-{name}-{trial}"
        target = rng.randint(0, job.total - 3)  # records on disk before the kill (0: during start-up)
        delay = rng.uniform(0, 0.04)
        proc = spawn(*job.args(out), log=work / f"kill-{name}-{trial}.log")
        kill_at(proc, out / job.output, target, delay)
        assert proc.returncode == -signal.SIGKILL, f"trial {trial}: the run ended before the kill"
        whole = _check_partial(job, out, expected)
        interrupted += len(whole) < job.total
        assert main([str(a) for a in job.args(out)]) == 0
        _check_resumed(job, out)
    assert interrupted == trials


def _sigint(job, work, tag, target):
    out = work / f"sigint-{tag}"
    log = work / f"sigint-{tag}.log"
    proc = spawn(*job.args(out), log=log)
    kill_at(proc, out / job.output, target, 0.01, sig=signal.SIGINT)
    text = log.read_text(errors="replace")
    assert proc.returncode == 130, (proc.returncode, text[-2000:])
    assert "Traceback" not in text, text[-3000:]
    lines = message_lines(text)
    assert len(lines) == 1 and lines[0].startswith("rlaif: interrupted"), lines
    whole = _check_partial(job, out, records(job.reference(work) / job.output))
    assert 0 < len(whole) < job.total
    entry = json.loads((out / "manifest.json").read_text())["stages"]
    assert not next(iter(entry.values()))["complete"]
    return out


def test_sigint_stops_cleanly_and_resumes(jobs, work, capsys):
    job = jobs["generate"]
    out = _sigint(job, work, "generate", 4)
    resumed = in_process(capsys, *job.args(out))
    assert resumed.returncode == 0 and "already done" in resumed.stdout
    _check_resumed(job, out)


def test_sigint_during_label_stops_cleanly_and_resumes(jobs, work, capsys):
    job = jobs["label"]
    out = _sigint(job, work, "label", 6)
    assert in_process(capsys, *job.args(out)).returncode == 0
    _check_resumed(job, out)


def _full_disk_then_resume(job, work, out, run_limited, free_space, capsys):
    proc = run_limited()
    line = one_error_line(proc)
    assert "no space left to write" in line and "run the same command to resume" in line, line
    whole = _check_partial(job, out, records(job.reference(work) / job.output))
    assert len(whole) < job.total
    raw = (out / job.output).read_bytes() if (out / job.output).exists() else b""
    assert raw == b"" or raw.endswith(b"\n"), "the failed batch was not taken back out"
    free_space()
    assert in_process(capsys, *job.args(out)).returncode == 0
    _check_resumed(job, out)


def test_file_size_limit_is_a_clear_error_and_a_later_run_completes(jobs, work, capsys):
    job = jobs["generate"]
    ref_size = (job.reference(work) / job.output).stat().st_size
    limit = ref_size // 2
    out = work / "fsize"

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    _full_disk_then_resume(job, work, out, lambda: run(*job.args(out), preexec_fn=limited), lambda: None, capsys)
    assert (out / job.output).stat().st_size == ref_size


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?); the RLIMIT_FSIZE test covers a full disk")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_tmpfs_is_a_clear_error_and_a_later_run_completes(jobs, work, small_tmpfs, capsys):
    job = jobs["generate"]
    job.reference(work)
    out = small_tmpfs / "out"
    out.mkdir()
    (out / ".rlaif.lock").write_bytes(b"0")  # the lock file takes its page before the filler
    st = os.statvfs(small_tmpfs)
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 4096))  # one page left for the output
    assert os.statvfs(small_tmpfs).f_bavail <= 1

    _full_disk_then_resume(job, work, out, lambda: run(*job.args(out)), filler.unlink, capsys)
    shutil.rmtree(out)


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_runs(jobs, work, capsys):
    """A real `rlaif generate` holds the folder; `generate` and `label` aimed at it are refused with
    the first one's pid, and the first run's output is exactly the uninterrupted reference. (This
    first run has one record a batch and 48 tokens each, so it is still running, on a loaded
    machine too, while both refusals load their model and try.)"""
    fast = jobs["generate"]
    argv = [str(a) for a in fast.argv]
    argv[argv.index("--max-tokens") + 1], argv[argv.index("--batch-size") + 1] = "48", "1"
    job = Job("generate-slow", argv, fast.output, fast.derived, fast.total)
    job.reference(work)
    out = work / "concurrent"
    proc = spawn(*job.args(out), log=work / "concurrent.log")
    try:
        kill_at(proc, out / job.output, 1, 0, sig=0)  # signal 0: only wait for the first batch on disk
        assert proc.poll() is None, "the first run finished too early to test the lock"
        for second in (job.args(out), [*jobs["label"].argv, "--out", out]):
            line = one_error_line(in_process(capsys, *second))
            assert f"another rlaif run (pid {proc.pid})" in line and str(out) in line, line
    finally:
        assert proc.wait(timeout=300) == 0
    _check_resumed(job, out)
