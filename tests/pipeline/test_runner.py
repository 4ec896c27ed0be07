import json
import os

import pytest

from rlaif.errors import RequestFailed, UserError
from rlaif.records import append_records, read_jsonl, read_output, record_id, write_atomic
from rlaif.manifest import MANIFEST
from rlaif.runner import FAILURES, OutputLock, run_stage


def items(n):
    return [{"id": record_id("x", i), "x": i} for i in range(n)]


def square(batch):
    return [{"id": r["id"], "y": r["x"] ** 2} for r in batch]


def test_ids_are_stable_and_input_derived():
    assert record_id("a", [1, {"b": 2}]) == record_id("a", [1, {"b": 2}])
    assert record_id("a", 1) != record_id("a", 2)


def test_atomic_writes_get_the_same_mode_as_plain_writes(tmp_path):
    (tmp_path / "plain.txt").write_text("x")
    write_atomic(tmp_path / "atomic.txt", "x")
    write_atomic(tmp_path / "atomic.txt", "y")  # replacing keeps it
    mode = lambda name: (tmp_path / name).stat().st_mode & 0o777  # noqa: E731
    assert mode("atomic.txt") == mode("plain.txt")
    assert (tmp_path / "atomic.txt").read_text() == "y"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_resume_skips_done_ids_and_keeps_input_order(tmp_path):
    calls = []

    def tracked(batch):
        calls.append([r["x"] for r in batch])
        return square(batch)

    first = run_stage("sq", items(5), tracked, tmp_path, config={"k": 1}, batch_size=2, progress=False)
    assert first.written == 5 and [r["y"] for r in first.records] == [0, 1, 4, 9, 16]
    calls.clear()
    second = run_stage("sq", items(7), tracked, tmp_path, config={"k": 1}, batch_size=2, progress=False)
    assert second.done_before == 5 and second.written == 2
    assert calls == [[4, 5], [6]]  # fixed batches: the batch holding 4 is redone, only 5 and 6 are new
    assert [r["y"] for r in second.records] == [i * i for i in range(7)]
    ids = [r["id"] for r in read_output(tmp_path / "sq.jsonl")]
    assert len(ids) == len(set(ids)) == 7


def test_batch_key_groups_similar_records_and_resumes_with_the_same_batches(tmp_path):
    calls = []

    def tracked(batch):
        calls.append([r["x"] for r in batch])
        return square(batch)

    data = [{"id": record_id("k", x), "x": x} for x in (5, 1, 4, 2, 3)]
    first = run_stage("sq", data[:3], tracked, tmp_path, config={}, batch_size=2, progress=False,
                      batch_key=lambda r: r["x"])
    assert calls == [[1, 4], [5]]
    assert [r["y"] for r in first.records] == [25, 1, 16]  # returned in input order
    calls.clear()
    second = run_stage("sq", data, tracked, tmp_path, config={}, batch_size=2, progress=False,
                       batch_key=lambda r: r["x"])
    assert calls == [[1, 2], [3, 4]]  # sorted 1 2 | 3 4 | 5: the two batches holding new records
    assert [r["y"] for r in second.records] == [25, 1, 16, 4, 9]
    assert sorted(r["y"] for r in read_output(tmp_path / "sq.jsonl")) == [1, 4, 9, 16, 25]


def test_batches_are_sorted_within_windows_of_whole_batches():
    from rlaif.runner import cut_batches

    data = [{"id": str(i), "x": x} for i, x in enumerate([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])]
    key = lambda r: r["x"]  # noqa: E731
    cut = lambda window: [[r["x"] for r in b] for b in cut_batches(data + data[:2], 3, key, window)]  # noqa: E731
    assert cut(4096) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]  # one window: a whole sort; repeats dropped
    assert cut(4) == [[4, 5, 6], [7, 8, 9], [0, 1, 2], [3]]  # windows of 6 (whole batches): 9..4 | 3..0


def test_a_reread_input_is_streamed_with_the_bytes_of_a_list(tmp_path, monkeypatch):
    """Over a `Reread` the runner holds ids and a window of inputs, not the inputs: 3,000 inputs of
    4 KB each (12 MB in all), windows of 256, run with a traced peak far below their size, into the
    file a list gives, and resume the same way."""
    import tracemalloc

    from rlaif import runner
    from rlaif.records import FileRecords, Reread

    monkeypatch.setattr(runner, "SORT_WINDOW", 256)

    def make():
        for i in range(3000):
            yield {"id": record_id("big", i), "x": i % 97, "payload": f"{i}:" + "x" * 4096}

    key = lambda r: r["x"]  # noqa: E731
    listed = run_stage("sq", list(make()), square, tmp_path / "list", config={}, batch_size=16, progress=False,
                       batch_key=key)
    tracemalloc.start()
    streamed = run_stage("sq", Reread(make), square, tmp_path / "stream", config={}, batch_size=16, progress=False,
                         batch_key=key)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4_000_000, f"peak {peak / 1e6:.1f} MB: the inputs were held"
    assert (tmp_path / "stream" / "sq.jsonl").read_bytes() == (tmp_path / "list" / "sq.jsonl").read_bytes()
    assert isinstance(streamed.records, FileRecords) and streamed.total == 3000
    assert list(streamed.records) == listed.records and streamed.records[5] == listed.records[5]
    path = tmp_path / "stream" / "sq.jsonl"
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:1000]))
    again = run_stage("sq", Reread(make), square, tmp_path / "stream", config={}, batch_size=16, progress=False,
                      batch_key=key)
    assert (again.done_before, again.written) == (1000, 2000)
    assert sorted(path.read_bytes().splitlines()) == sorted((tmp_path / "list" / "sq.jsonl").read_bytes().splitlines())
    with pytest.raises(TypeError, match="not an iterator"):
        run_stage("sq", make(), square, tmp_path / "gen", config={}, progress=False)


def test_torn_last_line_is_dropped_on_resume(tmp_path):
    run_stage("sq", items(4), square, tmp_path, config={}, batch_size=2, progress=False)
    path = tmp_path / "sq.jsonl"
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:3]) + b"\n" + lines[3][:7])  # last record cut mid-write
    result = run_stage("sq", items(4), square, tmp_path, config={}, batch_size=2, progress=False)
    assert result.written == 1 and len(result.records) == 4
    assert [json.loads(x)["y"] for x in path.read_text().splitlines()] == [0, 1, 4, 9]


def test_corrupt_middle_line_is_an_error_not_a_repair(tmp_path):
    path = tmp_path / "sq.jsonl"
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(UserError, match="sq.jsonl:2: corrupt line"):
        run_stage("sq", items(2), square, tmp_path, config={}, progress=False)


def test_overwrite_starts_over(tmp_path):
    run_stage("sq", items(3), square, tmp_path, config={}, progress=False)
    again = run_stage("sq", items(3), square, tmp_path, config={}, overwrite=True, progress=False)
    assert again.done_before == 0 and again.written == 3
    assert len(read_jsonl(tmp_path / "sq.jsonl")) == 3


def test_manifest_is_complete_and_written_atomically(tmp_path):
    run_stage("sq", items(3), square, tmp_path, config={"api_key_env": "OPENAI_API_KEY"}, progress=False,
              stats=lambda: {"retries": 0})
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    entry = manifest["stages"]["sq"]
    assert entry["counts"] == {"inputs": 3, "done_before": 0, "written": 3, "failed": 0, "done": 3}
    assert entry["complete"] and len(entry["config_hash"]) == 16 and entry["engine"] == {"retries": 0}
    assert {"rlaif", "python", "torch"} <= set(manifest["versions"])
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_failed_requests_go_to_failures_and_are_retried_next_run(tmp_path):
    bad = {record_id("x", 2)}

    def flaky(batch):
        if any(r["id"] in bad for r in batch):
            raise RequestFailed("HTTP 503 after 4 attempts", attempts=4)
        return square(batch)

    result = run_stage("sq", items(4), flaky, tmp_path, config={}, batch_size=2, progress=False)
    assert result.written == 3 and result.failed == 1
    failures = read_jsonl(tmp_path / FAILURES)
    assert failures == [{"stage": "sq", "id": record_id("x", 2), "reason": "HTTP 503 after 4 attempts",
                         "attempts": 4}]
    bad.clear()
    retry = run_stage("sq", items(4), flaky, tmp_path, config={}, batch_size=2, progress=False)
    assert retry.written == 1 and retry.failed == 0 and not (tmp_path / FAILURES).exists()


def test_lock_refuses_a_second_writer(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from rlaif.runner import OutputLock; from rlaif.errors import UserError\n"
            "try:\n with OutputLock(sys.argv[1]): pass\nexcept UserError as e: print(e); sys.exit(2)\n")
    with OutputLock(tmp_path):
        other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
        assert other.returncode == 2 and "another rlaif run" in other.stdout and str(os.getpid()) in other.stdout
    free = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert free.returncode == 0


def test_append_takes_a_failed_batch_back_out(tmp_path):
    import resource
    import signal

    path = tmp_path / "out.jsonl"
    append_records(path, [{"id": "a", "pad": "x" * 100}])
    size = path.stat().st_size
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 50, hard))
    try:
        with pytest.raises(OSError):
            append_records(path, [{"id": "b", "pad": "y" * 100}])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert path.stat().st_size == size and read_output(path) == [{"id": "a", "pad": "x" * 100}]
