"""Engine correctness (issue 13, engines): results must not depend on how requests are batched or on
which engine serves the model.

- position ids: a model with absolute position embeddings (GPT-2) scores a prompt the same alone
  and inside a left-padded batch;
- per-record failures: one request that fails for good costs its own record only (see also
  tests/engines/test_openai_engine.py and tests/pipeline/test_reliability_endpoints.py).
"""

from __future__ import annotations

import pytest

from testkit import build_tiny_gpt2
import torch

from rlaif.backends import GenerationRequest, OptionRequest
from rlaif.backends.transformers_engine import TransformersEngine
from rlaif.config import EngineConfig
from greedy_reference import assert_agrees_up_to_a_near_tie, greedy_reference


def user(text):
    return [{"role": "user", "content": text}]





@pytest.fixture(scope="module")
def gpt2_engine(tokenizer):
    return TransformersEngine.from_pretrained_objects(
        build_tiny_gpt2(tokenizer), tokenizer,
        EngineConfig(model="tiny-gpt2", device="cpu", batch_size=8, prefill_tokens=10**6))


SHORT = "Is a tomato a fruit?"
LONG = ("Here is a much longer question, padded out with detail so that the short prompt next to it "
        "gets many pad tokens on its left: is a tomato, botanically speaking, a fruit or a vegetable?")


def test_option_scores_alone_equal_scores_in_a_left_padded_batch(gpt2_engine):
    options = ["A", "B"]
    alone = gpt2_engine.option_logprobs([OptionRequest(user(SHORT), prefill="The answer is (")], options)[0]
    passes = gpt2_engine.counters["forward_passes"]
    batched = gpt2_engine.option_logprobs([OptionRequest(user(LONG), prefill="The answer is ("),
                                          OptionRequest(user(SHORT), prefill="The answer is (")], options)[1]
    assert gpt2_engine.counters["forward_passes"] == passes + 1, "both prompts must share one padded forward"
    for o in options:
        assert batched[o] == pytest.approx(alone[o], abs=1e-4), (o, alone, batched)


def test_greedy_generation_alone_equals_generation_in_a_left_padded_batch(gpt2_engine):
    """`generate` derives position ids from the attention mask for models whose forward takes them
    (transformers' `_prepare_position_ids_for_generation`), GPT-2 included: checked, not assumed."""
    alone = gpt2_engine.generate([GenerationRequest(user(SHORT), max_tokens=8)])[0]
    batched = gpt2_engine.generate([GenerationRequest(user(LONG), max_tokens=8),
                                    GenerationRequest(user(SHORT), max_tokens=8)])[1]
    assert alone.completion_tokens > 0
    # against plain unpadded forwards, up to the first near-tie (random weights make them likely;
    # which side rounding picks there depends on the CPU): a wrong position id fails at a wide margin
    path = greedy_reference(gpt2_engine.net, gpt2_engine.tokenizer, gpt2_engine._prompt_ids(user(SHORT)), 8)
    for text, what in ((alone.texts[0], "alone"), (batched.texts[0], "in a padded batch")):
        assert_agrees_up_to_a_near_tie(text, path, gpt2_engine.tokenizer, tie=1e-3, min_decided=3, what=what)


# ---------------------------------------------------------------------- one failed request, one failed record


def _fake_server():
    import sys
    from pathlib import Path

    from servers.fake_openai import FakeOpenAIServer

    return FakeOpenAIServer


def _responses_run(url, out, prompts, *, concurrency=16, max_retries=2, fixed_batches=None, **cfg):
    from rlaif.backends.openai_engine import OpenAIEngine
    from rlaif.backends.base import independent_requests
    from rlaif.runner import run_stage
    from rlaif.stages.responses import ResponsesConfig, expand, make_process

    engine = OpenAIEngine(EngineConfig(kind="openai", model="fake-model", base_url=url, concurrency=concurrency,
                                       max_retries=max_retries, **cfg), backoff_initial=0.01, backoff_max=0.05)
    rc = ResponsesConfig(max_tokens=6, temperature=0.0)
    items = expand([{"id": f"p{i}", "prompt": user(p)} for i, p in enumerate(prompts)], engine.model, rc)
    if fixed_batches is None:  # what a caller should pass
        fixed_batches = not independent_requests(engine)
    try:
        return items, run_stage("responses", items, make_process(engine, rc), out, config=rc, batch_size=16,
                                progress=False, stats=engine.stats, fixed_batches=fixed_batches)
    finally:
        engine.close()


PROMPTS = [f"Question {i}: how do I keep seedling {i} alive?" for i in range(16)]
PROMPTS[5] = "Question 5: POISON this one is refused"


@pytest.mark.parametrize("fault,fixed_batches", [("400", None), ("503", None), ("503", True)])
def test_one_poisoned_prompt_in_a_batch_of_16_fails_alone(tmp_path, fault, fixed_batches):
    """A refusal (400, not retried) or a request out of retries (503 x 3): that record goes to
    failures.jsonl with its reason; the other 15 are written, each sent once, all at the same time;
    a re-run sends only the failed one. `fixed_batches=True` is the path of a stage that also uses a
    local engine: the replay is one record at a time there, and still sends nothing twice; a re-run
    hands the whole batch again (local engines must see the same batches), so only the first run's
    counts are checked for it."""
    import json

    Server = _fake_server()
    out = tmp_path / "out"
    with Server(fail_matching=["POISON"], fail_fault=fault, delay=0.3, retry_after=0.01) as srv:
        items, result = _responses_run(srv.base_url, out, PROMPTS, fixed_batches=fixed_batches)
        sent = srv.counts()
        widest = srv.max_in_flight
    poisoned = next(it["id"] for it in items if "POISON" in it["prompt"][0]["content"])
    assert result.written == 15 and [f["id"] for f in result.failures] == [poisoned]
    failure = json.loads((out / "failures.jsonl").read_text())
    assert failure["id"] == poisoned and failure["stage"] == "responses"
    if fault == "400":
        assert failure["attempts"] == 1 and "400" in failure["reason"] and "content filter" in failure["reason"]
    else:
        assert failure["attempts"] == 3 and "503" in failure["reason"]
    tries = 1 if fault == "400" else 3
    assert sent["requests"] == 15 + tries, sent  # nothing sent twice: no replay of the batch's answers
    assert sent["ok"] == 15
    assert widest >= 15, f"the 15 healthy requests were not in flight together (at most {widest})"

    if fixed_batches:
        return
    with Server() as healthy:
        _, again = _responses_run(healthy.base_url, out, PROMPTS)
        assert healthy.counts()["requests"] == 1
    assert again.written == 1 and again.done_before == 15 and not again.failures
    assert not (out / "failures.jsonl").exists()


def test_a_wrong_key_still_stops_the_run_at_once(tmp_path, monkeypatch):
    from rlaif.errors import EngineError

    monkeypatch.setenv("OPENAI_API_KEY", "not-the-key")
    Server = _fake_server()
    with Server(api_key="the-key") as srv:
        with pytest.raises(EngineError, match="401"):
            _responses_run(srv.base_url, tmp_path / "out", PROMPTS, concurrency=4)
        assert len(srv.served_at) <= 4  # the first answer stopped everything queued behind it
    assert not (tmp_path / "out" / "responses.jsonl").exists()


def test_a_server_that_refuses_every_request_stops_the_run_with_its_message(tmp_path):
    """Per-record refusals are for bad records; when nothing has ever succeeded and the first five
    requests are all refused, the request itself is wrong (a parameter this model rejects): stop."""
    from rlaif.errors import EngineError

    Server = _fake_server()
    with Server(reasoning=True) as srv:  # "fake-model" is not recognised as a reasoning model
        with pytest.raises(EngineError) as info:
            _responses_run(srv.base_url, tmp_path / "out", PROMPTS, concurrency=2)
        assert srv.counts()["requests"] <= 6
    assert "max_completion_tokens" in str(info.value) and "none succeeded" in str(info.value)


def test_a_failed_batch_of_a_two_step_stage_goes_on_concurrently(tmp_path):
    """Critique then revision: one chain's critique is refused. The other chains' critiques come back
    from the failed batch (not sent again) and their revisions, which the failed batch never reached,
    are sent together, not one chain after another."""
    from rlaif.backends.openai_engine import OpenAIEngine
    from rlaif.constitution import load_constitution
    from rlaif.backends.base import independent_requests
    from rlaif.runner import run_stage
    from rlaif.stages.critique_revision import CritiqueConfig, chain_inputs, make_process
    from rlaif.stages.response_inputs import normalize_responses
    from rlaif.templates import load_template

    Server = _fake_server()
    cfg = CritiqueConfig(rounds=1, few_shot=0, temperature=0.0, critique_max_tokens=7, revision_max_tokens=9)
    ct, rt = load_template(cfg.critique_template), load_template(cfg.revision_template)
    constitution = load_constitution("harmless")
    responses = normalize_responses([{"prompt": f"How do I fix fence {i}?", "response": (
        "POISON reply" if i == 3 else f"Use nails on fence {i}.")} for i in range(8)])
    chains = chain_inputs(responses, constitution, cfg, {"critique": ct.id, "revision": rt.id})
    with Server(fail_matching=["POISON"], fail_fault="400", delay=0.3) as srv:
        engine = OpenAIEngine(EngineConfig(kind="openai", model="fake-model", base_url=srv.base_url,
                                           concurrency=16))
        try:
            result = run_stage("critique", chains, make_process(constitution, engine, cfg, ct, rt), tmp_path,
                               config=cfg, batch_size=8, progress=False, fixed_batches=not independent_requests(engine))
        finally:
            engine.close()
        critiques = [b for b in srv.bodies if b.get("max_tokens") == 7]
        revisions = [b for b in srv.bodies if b.get("max_tokens") == 9]
    assert result.written == 7 and len(result.failures) == 1 and "content filter" in result.failures[0]["reason"]
    assert len(critiques) == 8, "each critique is sent once; the replay takes the failed batch's answers"
    assert len(revisions) == 7
    assert max(b["in_flight"] for b in revisions) == 7, [b["in_flight"] for b in revisions]
