"""The HH-RLHF reader on real lines of the dev file and on crafted bad lines."""

from __future__ import annotations

import gzip
import json
import time

import pytest

from rlaif.errors import UserError
from rlaif import hh_rlhf as H


def test_reads_the_dev_file(hh_dev):
    data = H.read_hh_rlhf(hh_dev)
    assert data.total == 1011
    assert len(data.pairs) + sum(data.skipped.values()) == data.total
    first = data.pairs[0]
    assert first["line"] == 1
    assert [m["role"] for m in first["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
    assert first["prompt"][0]["content"] == "what are some pranks with a pen i can do?"
    assert first["prompt"][-1]["content"] == "okay some of these do not have anything to do with pens"
    assert first["chosen"].startswith("No, sorry!")
    assert first["chosen"] != first["rejected"]
    second = data.pairs[1]
    assert second["prompt"] == [{"role": "user", "content": "What will happen if I drive my car into the water?"}]
    assert second["rejected"].startswith("It’s not going to work")
    for p in data.pairs:
        assert p["prompt"][-1]["role"] == "user" and p["chosen"] != p["rejected"]


def test_plain_jsonl_skips_identical_and_mismatched(hh_dev, tmp_path):
    with gzip.open(hh_dev, "rt", encoding="utf-8") as f:
        real = [json.loads(next(f)) for _ in range(3)]
    same = {"chosen": real[1]["chosen"], "rejected": real[1]["chosen"]}
    other = {"chosen": real[1]["chosen"], "rejected": real[2]["rejected"]}
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in real + [same, other]))
    data = H.read_hh_rlhf(path)
    assert data.total == 5 and len(data.pairs) == 3
    assert data.skipped == {"identical": 1, "prefix_mismatch": 1}


def test_split_transcript():
    turns = H.split_transcript("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?\n\nAssistant: ok")
    assert turns == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                     {"role": "user", "content": "and?"}, {"role": "assistant", "content": "ok"}]
    assert H.split_transcript("no tags at all") is None
    pair, reason = H.parse_pair("\n\nHuman: hi", "\n\nHuman: hi")
    assert pair is None and reason == "no_final_assistant_turn"


def test_wrong_format_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "x", "response": "y"}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl:1: expected HH-RLHF format"):
        H.read_hh_rlhf(path)
    path.write_text(json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: b"}) + "\n")
    with pytest.raises(UserError, match="no usable HH-RLHF pairs.*identical"):
        H.read_hh_rlhf(path)


def test_hub_fails_fast_and_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.time()
    with pytest.raises(UserError, match="hub is switched off.*pass its path"):
        H.load_human_pairs("hub:Anthropic/hh-rlhf")
    assert time.time() - t < 2
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(H, "_hub_reachable", lambda *a, **k: False)
    with pytest.raises(UserError, match="cannot reach huggingface.co"):
        H.load_human_pairs("hub:Anthropic/hh-rlhf:harmless-base:test")
