"""`rlaif sft` and `rlaif kto` from the command line: a tiny model trains and saves; a file of the
wrong shape is one line and exit 2, with nothing written."""

import json

from rlaif.cli import main
from testkit import run_cli


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sft_then_kto_from_the_command_line(tiny_model_dir, tmp_path):
    sl = write_jsonl(tmp_path / "sl.jsonl", [
        {"prompt": [{"role": "user", "content": f"Question {i}?"}],
         "completion": [{"role": "assistant", "content": f"A short answer {i}."}]} for i in range(4)])
    assert main(["sft", "--data", str(sl), "--policy", str(tiny_model_dir), "--out", str(tmp_path / "sft"),
                 "--steps", "2", "--batch-size", "2", "--max-length", "64"]) == 0
    assert (tmp_path / "sft" / "config.json").exists()
    prefs = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": [{"role": "user", "content": f"Question {i}?"}], "p_chosen": 0.9,
         "chosen": [{"role": "assistant", "content": "Yes."}],
         "rejected": [{"role": "assistant", "content": "Well, it depends on a great many things."}]} for i in range(4)])
    assert main(["kto", "--data", str(prefs), "--policy", str(tmp_path / "sft"), "--out", str(tmp_path / "kto"),
                 "--steps", "1", "--batch-size", "4", "--max-length", "64"]) == 0
    summary = json.loads((tmp_path / "kto" / "summary.json").read_text())
    assert summary["steps"] == 1


def test_bad_files_are_one_line_and_exit_2(tmp_path):
    sl = write_jsonl(tmp_path / "sl.jsonl", [{"prompt": "hi"}])
    res = run_cli("sft", "--data", sl, "--out", tmp_path / "sft")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "completion" in res.stderr
    kto = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "hi", "completion": "yo", "label": "maybe"}])
    res = run_cli("kto", "--data", kto, "--out", tmp_path / "kto")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "label" in res.stderr
    assert not (tmp_path / "sft").exists() and not (tmp_path / "kto").exists()
