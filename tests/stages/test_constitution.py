"""Constitution schema, `rlaif constitution check`, principle sampling, and the shipped prompt sets."""

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import yaml

from rlaif.cli import main
from rlaif.constitution import check_constitutions, load_constitution
from rlaif.errors import UserError
from rlaif.prompts_io import read_prompts
from rlaif.stages.critique_revision import draw_principles

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ["harmless", "helpful_honest", "concise"]


def good() -> dict:
    return {
        "name": "t", "version": "1", "description": "test constitution",
        "principles": [
            {"id": "a", "critique_request": "crit a", "revision_request": "rev a",
             "comparison_question": "cmp a", "weight": 1.0},
            {"id": "b", "critique_request": "crit b", "revision_request": "rev b",
             "comparison_question": "cmp b"},
        ],
        "few_shot": [{"prompt": "p", "response": "r", "critique": "c", "revision": "v", "principle": "a"}],
    }


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_constitutions_load(name):
    c = load_constitution(name)
    assert c.name == name
    assert len(c.few_shot) >= 2
    assert len({p.id for p in c.principles}) == len(c.principles)
    if name == "harmless":
        assert len(c.principles) >= 12


def test_check_command_prints_summary(capsys):
    assert main(["constitution", "check", str(ROOT / "constitutions/harmless.yaml"), "concise"]) == 0
    out = capsys.readouterr().out
    assert "harmless.yaml: ok" in out and "version: 1.0" in out
    assert "physical-harm" in out and "weight 2" in out
    assert "few-shot exemplars: 3" in out
    assert "name: concise" in out and "no-padding" in out


def _mutate(fn):
    data = good()
    fn(data)
    return data


def _del(d, *path):
    for p in path[:-1]:
        d = d[p]
    del d[path[-1]]


BAD = {
    "missing field": (lambda d: _del(d, "principles", 0, "critique_request"),
                      "principles.0.critique_request", "missing required field"),
    "missing name": (lambda d: _del(d, "name"), "field name", "missing required field"),
    "wrong type": (lambda d: d["principles"][1].update(weight="heavy"), "principles.1.weight", "number"),
    "negative weight": (lambda d: d["principles"][0].update(weight=-1), "principles.0.weight", "greater than 0"),
    "empty principles": (lambda d: d.update(principles=[]), "field principles", "at least 1"),
    "principles not a list": (lambda d: d.update(principles="be nice"), "field principles", "list"),
    "unknown key": (lambda d: d.update(colour="blue"), "field colour", "unknown key"),
    "unknown principle key": (lambda d: d["principles"][0].update(critque="x"), "principles.0.critque",
                              "unknown key"),
    "duplicate ids": (lambda d: d["principles"][1].update(id="a"), "principles.1.id", "duplicate principle id 'a'"),
    "exemplar names unknown principle": (lambda d: d["few_shot"][0].update(principle="zzz"),
                                         "few_shot.0.principle", "'zzz' is not the id"),
    "empty exemplar field": (lambda d: d["few_shot"][0].update(revision=""), "few_shot.0.revision", "at least 1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_schema_errors_name_file_and_field(case, tmp_path, capsys):
    mutate, field, expected = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_mutate(mutate)))
    with pytest.raises(UserError) as err:
        load_constitution(path)
    msg = str(err.value)
    assert str(path) in msg and field in msg and expected in msg, msg
    assert "\n" not in msg
    # the CLI: exit 2, one line on stderr, no traceback
    assert main(["constitution", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"rlaif: error: {msg}"
    assert "Traceback" not in captured.err


def test_yaml_syntax_error_and_missing_file(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nprinciples: [\n")
    assert main(["constitution", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "invalid YAML" in err
    assert main(["constitution", "check", str(tmp_path / "nope.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_good_file_validates(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(good()))
    assert "principles: 2" in check_constitutions([path])


def test_sampling_is_reproducible_and_does_not_repeat():
    c = load_constitution("harmless")
    a = [p.id for p in c.sample_principles(random.Random(7), 5)]
    b = [p.id for p in c.sample_principles(random.Random(7), 5)]
    assert a == b and len(set(a)) == 5
    # per-chain draws depend only on (run seed, response id)
    d1 = [p.id for p in draw_principles(c, 0, "resp-1", 2)]
    assert d1 == [p.id for p in draw_principles(c, 0, "resp-1", 2)]
    assert len(set(d1)) == 2
    many = {tuple(p.id for p in draw_principles(c, s, "resp-1", 2)) for s in range(20)}
    assert len(many) > 10  # the seed matters
    ids = {tuple(p.id for p in draw_principles(c, 0, f"resp-{i}", 2)) for i in range(20)}
    assert len(ids) > 10  # and so does the response id
    # more rounds than principles: every principle once before any repeats
    small = load_constitution("concise")
    ids5 = [p.id for p in small.sample_principles(random.Random(1), len(small.principles))]
    assert sorted(ids5) == sorted(p.id for p in small.principles)


def test_sampling_honours_weights(tmp_path):
    data = good()
    data["principles"] = [dict(data["principles"][1], id=f"p{w}", weight=w) for w in (1, 2, 4)]
    data["few_shot"] = []
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(data))
    c = load_constitution(path)
    n = 7000
    counts = Counter(draw_principles(c, 0, f"r{i}", 1)[0].id for i in range(n))
    for w in (1, 2, 4):
        assert abs(counts[f"p{w}"] / n - w / 7) < 0.02, counts
    # without repeats, the second draw of a chain is conditioned on the first: p4 is less often
    # second than first, and never both
    pairs = [tuple(p.id for p in draw_principles(c, 0, f"r{i}", 2)) for i in range(2000)]
    assert all(a != b for a, b in pairs)
    assert sum(a == "p4" for a, _ in pairs) > sum(b == "p4" for _, b in pairs)


def test_shipped_prompt_sets():
    for name, minimum, prefix in (("red_team", 100, "rt-"), ("helpful", 50, "hp-")):
        raw = [json.loads(line) for line in (ROOT / f"prompts/{name}.jsonl").read_text().splitlines()]
        assert len(raw) >= minimum
        assert len({r["prompt"] for r in raw}) == len(raw)
        assert len({r["id"] for r in raw}) == len(raw) and all(r["id"].startswith(prefix) for r in raw)
        assert all(r["category"] and r["prompt"].strip() for r in raw)
        assert len(read_prompts(name)) == len(raw)
    cats = Counter(json.loads(line)["category"] for line in (ROOT / "prompts/red_team.jsonl").open())
    assert len(cats) >= 12
    first30 = {json.loads(line)["category"] for line in (ROOT / "prompts/red_team.jsonl").read_text().splitlines()[:30]}
    assert len(first30) == len(cats)  # interleaved: a head of the file covers every category
