"""The judge audit validates itself on judges whose biases are planted with a known strength (the
rule judges of tests/support/rule_judge.py, mixed with seeded noise), then runs end to end: the command on
a judge behind a real OpenAI-protocol server, the gates (exit 1, one line), a pipeline stopped by a
gate, and the embedded judge."""

from __future__ import annotations

import hashlib
import json
import math
import re

import pytest

from rlaif.backends.base import OptionLogprobs
from rlaif.constitution import load_constitution
from rlaif.errors import GateFailed
from rlaif.judge import AuditGates, Judge, gate_failures, judge_directed
from rlaif.judge.audit import INJECTIONS, injected, padded

from testkit import run_cli
from rule_judge import DIGITS, RuleJudge, pair_replies, single_reply, _last_user

CONSTITUTIONS = ("harmless", "helpful_honest", "concise")


class NoisyJudge:
    """An unbiased judge with seeded noise: its answer to a pair depends on the two replies' text and
    nothing else (not the template's wording, not which side a reply sits on beyond its content), its
    direct score on the reply's text alone. `planted` (a RuleJudge) answers instead on a seeded share
    `strength` of the requests: a bias of known strength."""

    name = "noisy"

    def __init__(self, seed: int, planted: RuleJudge | None = None, strength: float = 0.0):
        self.seed, self.planted, self.strength = seed, planted, strength
        self.model = f"noisy:{planted.rule if planted else 'none'}:{strength}"

    def _u(self, *parts: str) -> float:
        blob = "\x00".join([str(self.seed), *parts]).encode()
        return int(hashlib.sha256(blob).hexdigest()[:12], 16) / 16 ** 12

    def option_logprobs(self, requests, options):
        out = []
        for r in requests:
            if self.planted is not None and self._u("pick", repr(r.messages), r.prefill) < self.strength:
                out.append(self.planted.option_logprobs([r], options)[0])
                continue
            text = _last_user(r.messages)
            if list(options) == ["A", "B"]:
                a, b = pair_replies(text)
                p = 0.1 + 0.8 * self._u("pair", a, b)
                out.append(OptionLogprobs({"A": math.log(p), "B": math.log(1 - p)}))
            elif set(DIGITS) <= set(options):
                d = str(1 + int(9 * self._u("digit", single_reply(text))))
                out.append(OptionLogprobs({o: math.log(0.6 if o == d else 0.4 / 8) if o != "10" else math.log(1e-6)
                                           for o in options}))
            else:
                out.append(OptionLogprobs({o: -math.log(len(options)) for o in options}))
        return out

    def generate(self, requests):
        return RuleJudge("shorter").generate(requests)

    def is_single_token(self, option):
        return len(option.strip()) == 1

    def close(self):
        pass


PLANTED = [("verbosity", "longer"), ("injection", "obeys"), ("position", "first"), ("template", "wording")]


@pytest.mark.parametrize("probe, rule", PLANTED)
def test_each_probe_finds_its_planted_bias(probe, rule):
    """A bias planted on half of the judge's answers (the rest seeded noise) is flagged in at least
    90 % of 20 seeded runs at the default size (the constitution's 30 check pairs)."""
    found = 0
    for seed in range(20):
        judge = Judge(NoisyJudge(seed, RuleJudge(rule, 0.9, seed=seed), 0.5), CONSTITUTIONS[seed % 3])
        stat = judge.audit(seed=seed, probes=[probe])["probes"][probe]
        found += stat["flagged"]
        assert stat["n"] == 30
    assert found >= 18, f"{probe}: found the planted {rule} bias in {found} of 20 runs"


@pytest.mark.parametrize("probe", ["verbosity", "injection", "position", "template"])
def test_an_unbiased_judge_is_not_flagged(probe):
    """The noise alone (no planted bias) is flagged in at most 5 % of 40 seeded runs."""
    flagged = sum(Judge(NoisyJudge(seed), CONSTITUTIONS[seed % 3]).audit(seed=seed, probes=[probe])
                  ["probes"][probe]["flagged"] for seed in range(40))
    assert flagged <= 2, f"{probe}: an unbiased judge was flagged in {flagged} of 40 runs"


def test_effects_have_the_sign_and_size_the_planted_rules_imply():
    """Deterministic rule judges (accuracy 0.9, no noise): the effects are exact."""
    c = load_constitution("concise")
    longer = Judge(RuleJudge("longer", 0.9), c).audit(probes=["verbosity"])["probes"]["verbosity"]
    assert longer["effect"] == pytest.approx(0.4) and longer["ci95"] == pytest.approx([0.4, 0.4])
    assert longer["score_shift"]["effect"] > 0  # the padded reply scores higher too
    mixed = load_constitution("harmless")  # its better replies are the longer ones half the time
    shorter = Judge(RuleJudge("shorter", 0.9), mixed).audit(probes=["verbosity", "position", "template"])["probes"]
    assert shorter["verbosity"]["effect"] == pytest.approx(-0.4) and not shorter["verbosity"]["flagged"]
    assert shorter["position"]["effect"] == pytest.approx(0.0) and shorter["position"]["flip_rate"] == 0.0
    assert shorter["template"]["effect"] == pytest.approx(0.0) and shorter["template"]["rank_agreement"] == pytest.approx(1.0)
    first = Judge(RuleJudge("first", 0.9), c).audit(probes=["position"])["probes"]["position"]
    assert first["effect"] == pytest.approx(0.4) and first["flip_rate"] == 1.0 and first["flagged"]
    obeys = Judge(RuleJudge("obeys", 0.9), c).audit(probes=["injection"])["probes"]["injection"]
    assert obeys["effect"] == pytest.approx(0.4) and obeys["flagged"]
    assert obeys["sanitised"]["effect"] == pytest.approx(0.4) and "raw" in obeys
    assert obeys["score_shift"]["effect"] > 0  # 9 against 5 for an injected reply


def test_injected_and_padded_replies():
    assert all(judge_directed(injected("A fine reply.", k)) for k in range(len(INJECTIONS)))
    assert not judge_directed(padded("A fine reply.", 0)) and not judge_directed("A fine reply.")
    assert len(padded("x", 1).split()) > 30


def test_self_preference_needs_pairs_and_measures_against_the_reference():
    c = load_constitution("concise")
    judge = Judge(RuleJudge("longer", 0.9), c)
    skipped = judge.audit(probes=["self_preference"])["probes"]["self_preference"]
    assert skipped["status"] == "skipped" and "--self-pairs" in skipped["reason"]
    own = [{"prompt": f"question {i}", "own": "a long reply of the judge's own model, many words " * 2,
            "other": "short one", "p_reference": 0.5} for i in range(12)]
    stat = judge.audit(self_pairs=own, probes=["self_preference"])["probes"]["self_preference"]
    assert stat["effect"] == pytest.approx(0.4) and stat["flagged"] and stat["n"] == 12


def test_gates_trip_with_one_line_naming_the_probe():
    judge = Judge(RuleJudge("obeys", 0.9), "concise")
    audit = judge.audit(probes=["injection", "position"])
    assert gate_failures(audit, AuditGates(max_injection_shift=0.5, max_position_bias=0.0)) == []
    lines = gate_failures(audit, AuditGates(max_injection_shift=0.05))
    assert len(lines) == 1 and lines[0].startswith("judge audit: injection effect +0.400 (95 % CI")
    assert "max_injection_shift = 0.05" in lines[0]


def test_the_command_on_a_judge_behind_an_openai_server(tmp_path):
    """`rlaif judge-audit` through the openai engine and a real HTTP server on 127.0.0.1: files and
    lines without gates; a gate that trips is exit 1 and one line on stderr; bad input is exit 2."""
    from servers.fake_openai import FakeOpenAIServer

    with FakeOpenAIServer(owned_by="vllm") as srv:
        common = ["judge-audit", "--judge", "openai:fake-model", "--base-url", srv.base_url, "--constitution",
                  "concise"]
        ok = run_cli(*common, "--out", tmp_path / "a", timeout=300)
        assert ok.returncode == 0, ok.stderr[-2000:]
        result = json.loads((tmp_path / "a" / "audit.json").read_text())
        assert set(result["probes"]) == {"position", "verbosity", "template", "injection", "self_preference"}
        assert result["pairs"] == 30 and (tmp_path / "a" / "audit.md").stat().st_size > 0
        assert sum(line.startswith("judge audit: ") for line in ok.stdout.splitlines()) == 5
        gated = run_cli(*common, "--out", tmp_path / "b", "--max-template-delta", "0", timeout=300)
        assert gated.returncode == 1
        assert re.fullmatch(r"judge audit: template effect \+\d\.\d{3} \(95 % CI .*\) exceeds the gate "
                            r"max_template_delta = 0", gated.stderr.strip())
        assert json.loads((tmp_path / "b" / "audit.json").read_text())["failed_gates"]
    bad = run_cli("judge-audit", "--judge", "openai:x", "--base-url", "http://127.0.0.1:9/v1", "--self-pairs",
                  tmp_path / "missing.jsonl", "--out", tmp_path / "c", timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "missing.jsonl" in bad.stderr


def test_a_gate_stops_a_pipeline_with_exit_1_and_the_report_shows_the_audit(tmp_path):
    """A pipeline whose only judge use is the audit: its gate trips, the run stops with one line and
    exit 1, and report.html opens with the audit."""
    from servers.fake_openai import FakeOpenAIServer

    with FakeOpenAIServer(owned_by="vllm") as srv:
        spec = tmp_path / "p.yaml"
        spec.write_text(f"""name: audit-gate
constitution: concise
judge: {{kind: openai, model: fake-model, base_url: "{srv.base_url}"}}
judge_check: {{enabled: false}}
judge_audit: {{max_template_delta: 0.0}}
stages:
  label: {{}}
""")
        run = run_cli("run", spec, "--out", tmp_path / "out", timeout=600)
    assert run.returncode == 1, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1].startswith("judge audit: template effect")
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Judge audit" in html and "the run stopped here" in html
    assert not (tmp_path / "out" / "label").exists()  # nothing was labeled


@pytest.mark.slow
def test_the_embedded_judge_audit_runs(embedded_engine, capsys):
    """Mechanics on CPU: every probe reports an effect with a CI on the 135M judge (eight of the
    check pairs, to keep the suite's time; `rlaif judge-audit` runs all of them)."""
    from rlaif.judge import check_pairs

    pairs = [{k: p[k] for k in ("prompt", "a", "b")} for p in check_pairs(load_constitution("harmless"))[:8]]
    audit = Judge(embedded_engine, "harmless").audit(pairs, seed=0)
    for name in ("position", "verbosity", "template", "injection"):
        stat = audit["probes"][name]
        lo, hi = stat["ci95"]
        assert lo <= stat["effect"] <= hi and stat["n"] == 8, name
    print(json.dumps({k: {"effect": round(v["effect"], 3), "ci95": [round(x, 3) for x in v["ci95"]]}
                      for k, v in audit["probes"].items() if "effect" in v}))
