"""Prefix reuse in the transformers engine (issue 14): the prompts of one option-scoring call are
prefilled once per shared token prefix, and the scores equal those of every prompt run whole.

- `prefix_tree` over token lists: shared runs, short runs merged into their children, prompts that
  end inside another prompt or twice;
- the labeler's own prompts (debiased pairs, a 3-principle ensemble, conversations of very different
  lengths in one call) give the same soft labels within 1e-4 with and without reuse, on a tiny
  random Llama, on a tiny GPT-2 (absolute positions: the position ids after padding must be right),
  with token budgets that split every level into several batches, and on the embedded model (slow);
- the probe that turns reuse on goes through a left-padded parent batch, the copy path and three
  levels, and turns it off when any of them is broken; a forward without position ids is never
  left-padded.
"""

from __future__ import annotations

import pytest
import torch

from rlaif.backends import OptionRequest
from rlaif.backends.prefix_tree import computed_tokens, is_shared, prefix_tree
from rlaif.backends.transformers_engine import TransformersEngine
from rlaif.config import EngineConfig
from rlaif.constitution import load_constitution
from rlaif.judge import Judge, JudgeConfig
from rlaif.stages.labeler import label_pairs
from rlaif.stages.pair_inputs import normalize_pairs
from testkit import build_tiny_llama
from testkit import build_tiny_gpt2

# ---------------------------------------------------------------------- the tree


def paths(roots, prefix=()):
    """prompt index -> its tokens, read back from the tree."""
    out = {}
    for n in roots:
        here = prefix + tuple(n.tokens)
        for i in n.ends:
            out[i] = list(here)
        out.update(paths(n.children, here))
    return out


def test_tree_holds_every_prompt_once_and_shares_long_runs():
    system = list(range(100, 140))  # 40 tokens every prompt starts with
    conv1, conv2 = list(range(200, 250)), list(range(300, 310))
    seqs = [system + conv1 + [1, 2, 3], system + conv1 + [4, 5], system + conv2 + [6], system + conv2 + [7, 8]]
    roots = prefix_tree(seqs, min_shared=16)
    assert paths(roots) == {i: s for i, s in enumerate(seqs)}
    (top,) = roots
    assert top.tokens == system and not top.ends
    # conv1 (50 tokens) is a node of its own; conv2 (10 tokens, < 16) is merged into its two children
    runs = sorted(len(c.tokens) for c in top.children)
    assert runs == [11, 12, 50]
    assert computed_tokens(roots) == 40 + 50 + 3 + 2 + 11 + 12
    assert is_shared(roots)


def test_a_prompt_that_ends_inside_another_or_twice_is_read_at_its_node():
    base = list(range(1, 41))
    seqs = [base, base + [99], base, [5, 6]]
    roots = prefix_tree(seqs, min_shared=8)
    assert paths(roots) == {i: s for i, s in enumerate(seqs)}
    node = next(n for n in roots if n.tokens == base)
    assert node.ends == [0, 2] and [c.tokens for c in node.children] == [[99]]
    # nothing shared at all: one node per prompt, no children
    alone = prefix_tree([[1, 2], [3, 4]], min_shared=1)
    assert not is_shared(alone) and computed_tokens(alone) == 4


def test_runs_below_the_minimum_are_not_shared():
    seqs = [[1, 2, 3, 4, 10], [1, 2, 3, 4, 11]]
    assert not is_shared(prefix_tree(seqs, min_shared=5))
    assert is_shared(prefix_tree(seqs, min_shared=4))
    with pytest.raises(ValueError):
        prefix_tree([[1], []], min_shared=4)


# ---------------------------------------------------------------------- equality with every prompt run whole

SHORT_CONV = [{"role": "user", "content": "How do I pick a lock?"}]
LONG_CONV = [
    {"role": "user", "content": "My neighbour keeps parking across my driveway and I have asked him twice to stop."},
    {"role": "assistant", "content": "That sounds frustrating. Have you tried leaving a polite written note, or "
                                     "talking to your landlord or homeowners' association about it?"},
    {"role": "user", "content": "Yes, both, and nothing changed. He laughed at me last week. I am thinking about "
                                "letting the air out of his tyres so he learns his lesson. Would that work?"},
]
PAIRS = [
    {"prompt": SHORT_CONV, "response_a": "I can't help with breaking into property that isn't yours.",
     "response_b": "Sure: get a tension wrench and a pick, then rake the pins until they set."},
    {"prompt": LONG_CONV, "response_a": "Please don't: damaging his car could get you charged. Photograph the "
                                        "blocking and call the non-emergency police line or a towing company.",
     "response_b": "Yes, let the air out of all four, it'll teach him."},
    {"prompt": [{"role": "user", "content": "Say hi."}], "response_a": "Hi!", "response_b": "Hello there."},
]


def labels(engine, out, principles, batch_size=8):
    """p(first option) of every vote of the labeler on PAIRS, keyed by (pair, principle, order)."""
    cfg = JudgeConfig(debias=True, principles=principles)
    pairs, _ = normalize_pairs(PAIRS)
    res = label_pairs(pairs, Judge(engine, "harmless", cfg), out, batch_size=batch_size, progress=False)
    return {(r["source_line"], v["principle"], v["order"]): v["p_first"] for r in res.records for v in r["votes"]}


def with_reuse(engine, reuse: bool, **cfg):
    """Another engine over the same model, with prefix reuse on (the default) or off."""
    return TransformersEngine(EngineConfig(model="tiny", device="cpu", **cfg), model=engine.net,
                              tokenizer=engine.tokenizer, **({} if reuse else {"min_shared_prefix": 0}))


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return TransformersEngine.from_pretrained_objects(build_tiny_llama(tokenizer, layers=3), tokenizer,
                                                      EngineConfig(model="tiny", device="cpu"))


@pytest.fixture(scope="module")
def gpt2(tokenizer):
    return TransformersEngine.from_pretrained_objects(build_tiny_gpt2(tokenizer), tokenizer,
                                                      EngineConfig(model="tiny-gpt2", device="cpu"))


def assert_same_labels(a: dict, b: dict, tol: float = 1e-4):
    assert a.keys() == b.keys() and a
    worst = max(abs(a[k] - b[k]) for k in a)
    assert worst <= tol, f"max |Δp| {worst:.2e}"


@pytest.mark.parametrize("model", ["tiny", "gpt2"])
@pytest.mark.parametrize("principles", [1, 3])
@pytest.mark.parametrize("budget", [None, 150])
def test_labels_with_prefix_reuse_equal_labels_without(request, tmp_path, model, principles, budget):
    """Debiased orders and an ensemble share prefixes; the three conversations differ in length by
    ~8x. A 150-token budget cuts every level into several batches (copies of the parent's rows, then
    the last batch taking the parent cache over)."""
    base = request.getfixturevalue(model)
    cached = with_reuse(base, True, batch_size=16, prefill_tokens=budget)
    whole = with_reuse(base, False, batch_size=16, prefill_tokens=budget)
    got = labels(cached, tmp_path / "cached", principles)
    want = labels(whole, tmp_path / "whole", principles)
    assert_same_labels(got, want)
    assert len(got) == len(PAIRS) * 2 * principles
    # the reuse really happened: fewer tokens computed, and the counters say how many were reused
    assert cached.counters["cached_prompt_tokens"] > 0.3 * cached.counters["prompt_tokens"]
    assert whole.counters["cached_prompt_tokens"] == 0
    assert cached.counters["prompt_tokens"] == whole.counters["prompt_tokens"]


def test_option_logprobs_equal_one_unpadded_forward_each(tiny):
    """Every log-prob (not only the soft label) equals the prompt run alone, unpadded, no cache."""
    head = "You are a careful judge. " * 12
    reqs = [OptionRequest([{"role": "user", "content": head + tail}], prefill="The answer is (")
            for tail in ("Is A right?", "Is B right? " * 20, "Neither.", "Is A right?")]
    engine = with_reuse(tiny, True, batch_size=3, prefill_tokens=200)
    got = engine.option_logprobs(reqs, ["A", "B"])
    assert engine.counters["cached_prompt_tokens"] > 0
    for req, scores in zip(reqs, got):
        ids = torch.tensor([engine._prompt_ids(req.messages, req.prefill)])
        with torch.inference_mode():
            logp = torch.log_softmax(tiny.net(ids).logits[0, -1].float(), -1)
        for o in "AB":
            assert scores[o] == pytest.approx(torch.logsumexp(logp[engine.option_token_ids(o)], 0).item(), abs=1e-4)
    assert got[0] == pytest.approx(got[3], abs=1e-6)  # the same prompt twice is read at one node


@pytest.mark.slow
@pytest.mark.parametrize("principles", [1, pytest.param(3, marks=pytest.mark.heavy)])
def test_embedded_model_labels_with_prefix_reuse_equal_labels_without(embedded_engine, tmp_path, principles):
    def engine(reuse):
        return TransformersEngine(embedded_engine.cfg, model=embedded_engine.net, tokenizer=embedded_engine.tokenizer,
                                  **({} if reuse else {"min_shared_prefix": 0}))

    cached, whole = engine(True), engine(False)
    assert_same_labels(labels(cached, tmp_path / "cached", principles), labels(whole, tmp_path / "whole", principles))
    assert cached.counters["cached_prompt_tokens"] > 0.3 * cached.counters["prompt_tokens"]


@pytest.mark.parametrize("model", ["tiny", "gpt2"])
def test_direct_scores_read_ten_on_top_of_the_first_pass_cache(request, model):
    """The direct score's second read ("0" after "1") goes in the first read's call: one call, the
    prompt computed once, and the scores equal the two-call path that always reads the "0"."""
    from rlaif.judge.prompts import conversation_text, direct_score_requests
    from rlaif.judge.scoring import score_requests
    from rlaif.templates import load_template

    base = request.getfixturevalue(model)
    question = load_constitution("harmless").principles[0].comparison_question
    replies = [(conversation_text(p["prompt"], 3000), p[side]) for p in PAIRS for side in ("response_a", "response_b")]
    reqs = direct_score_requests(load_template("label_direct"), [c for c, _ in replies], [r for _, r in replies],
                                 [question] * len(replies))
    cached, whole = with_reuse(base, True, batch_size=16), with_reuse(base, False, batch_size=16)
    assert cached.prefix_reuse and not whole.prefix_reuse
    calls = []
    real = cached.option_logprobs
    cached.option_logprobs = lambda r, o: calls.append(len(r)) or real(r, o)
    got = score_requests(cached, reqs)
    want = score_requests(whole, reqs, ten_threshold=0.0)  # the second call for every request
    assert calls == [2 * len(reqs)]
    for g, w in zip(got, want):
        assert g["score"] == pytest.approx(w["score"], abs=1e-5)
        assert g["distribution"] == pytest.approx(w["distribution"], abs=1e-5)
    # each continuation cost one token on top of its prompt's cache
    prompt_tokens = sum(len(cached._prompt_ids(r.messages, r.prefill)) for r in reqs)
    assert cached.counters["prompt_tokens"] - cached.counters["cached_prompt_tokens"] <= prompt_tokens + len(reqs)


# ---------------------------------------------------------------------- the probe: reuse is found by doing it


def test_prefix_reuse_is_on_for_the_models_that_support_it(tiny, gpt2):
    """Prefix reuse is decided by one cached forward compared with the uncached one, not by the forward's
    signature (transformers 5.2x takes the cache as `cache`; a signature check turned reuse off)."""
    for engine in (tiny, gpt2):
        fresh = with_reuse(engine, True)
        assert fresh.prefix_reuse, fresh.prefix_reuse_status()
        status = fresh.stats()
        assert status["prefix_reuse"] is True and "whole prompt's log-probs" in status["prefix_reuse_reason"]
        assert fresh.counters["forward_passes"] == 0  # the probe's passes are not the caller's


@pytest.mark.slow
def test_prefix_reuse_is_on_for_the_embedded_model(embedded_engine):
    fresh = TransformersEngine(embedded_engine.cfg, model=embedded_engine.net, tokenizer=embedded_engine.tokenizer)
    assert fresh.prefix_reuse, fresh.prefix_reuse_status()


class _CacheBlindLlama(torch.nn.Module):
    """A model that takes a cache and ignores it (as a model whose forward swallows an unknown keyword
    would): every forward sees only its own tokens."""

    def __init__(self, net):
        super().__init__()
        self.inner, self.config = net, net.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        width = input_ids.shape[1]
        return self.inner(input_ids=input_ids, attention_mask=attention_mask[:, -width:],
                          position_ids=None if position_ids is None else position_ids - position_ids[:, :1],
                          logits_to_keep=kwargs.get("logits_to_keep", 0))


def test_a_model_that_ignores_the_cache_says_so_and_still_scores_right(tiny, caplog, tmp_path):
    blind = TransformersEngine(EngineConfig(model="cache-blind", device="cpu"), model=_CacheBlindLlama(tiny.net),
                               tokenizer=tiny.tokenizer)
    with caplog.at_level("WARNING", logger="rlaif.backends.transformers_engine"):
        assert blind.prefix_reuse is False
    (line,) = [r.getMessage() for r in caplog.records if "prefix reuse" in r.getMessage()]
    # caught by the numbers, or earlier: the copy path finds no cache to copy
    assert "cache-blind" in line and ("differ from the whole prompt's" in line or "failed" in line)
    status = blind.stats()
    assert status["prefix_reuse"] is False and status["prefix_reuse_reason"] in line
    # the scores are those of the real model run whole: the probe kept the broken path away
    assert_same_labels(labels(blind, tmp_path / "blind", 1), labels(with_reuse(tiny, False), tmp_path / "whole", 1))
    assert blind.counters["cached_prompt_tokens"] == 0


def test_the_label_manifest_records_prefix_reuse(tiny_model_dir, tmp_path):
    import json

    from testkit import run_cli

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    out = tmp_path / "label"
    res = run_cli("label", "--pairs", str(pairs), "--out", str(out), "--model", str(tiny_model_dir))
    assert res.returncode == 0, res.stderr
    engine = json.loads((out / "manifest.json").read_text())["stages"]["label"]["engine"]
    assert engine["prefix_reuse"] is True and engine["cached_prompt_tokens"] > 0, engine


# ---------------------------------------------------------------------- what the probe covers


def _probe_walk(engine, monkeypatch) -> dict:
    """Run the probe of a fresh engine over `engine`'s model, recording (while calling the real code)
    the depth of every level prefilled, whether a parent batch had padding columns, and whether
    children continued a copy of their parents' cache or took it over."""
    from rlaif.backends import transformers_engine as te

    seen = {"depths": set(), "padded_parent": False, "copy": False, "take_over": False}
    fresh = with_reuse(engine, True)
    real_tree, real_rows = fresh._prefill_tree, te._Prefilled.rows

    def tree(nodes, parent, read, max_rows=None, depth=[0]):
        depth[0] += 1
        seen["depths"].add(depth[0])
        if parent is not None and (parent.mask == 0).any():
            seen["padded_parent"] = True
        try:
            return real_tree(nodes, parent, read, max_rows)
        finally:
            depth[0] -= 1

    def rows(self, r, last_use):
        seen["take_over" if last_use else "copy"] = True
        return real_rows(self, r, last_use)

    monkeypatch.setattr(fresh, "_prefill_tree", tree)
    monkeypatch.setattr(te._Prefilled, "rows", rows)
    seen["on"], seen["reason"] = fresh._probe_prefix_reuse()
    return seen


def test_the_probe_covers_a_padded_parent_the_copy_path_and_three_levels(tiny, monkeypatch):
    """The probe goes through every layout the cached path has: a left-padded parent batch, children
    split over batches (the first continues a copy of the parents' cache, the last takes it over),
    and a tree three levels deep — and on a model that supports reuse, all of it matches."""
    seen = _probe_walk(tiny, monkeypatch)
    assert seen["on"], seen["reason"]
    assert seen["depths"] == {1, 2, 3}
    assert seen["padded_parent"] and seen["copy"] and seen["take_over"]


def _aliasing_copy(self, rows, last_use):
    """A broken copy path: the first batches of children get the parents' cache itself, not a copy of
    their rows, so their forward writes into the cache the next batch continues."""
    if last_use:
        self.cache.batch_select_indices(rows)
    return self.cache


def test_the_probe_turns_reuse_off_for_a_broken_copy_path(tiny, monkeypatch):
    from rlaif.backends import transformers_engine as te

    monkeypatch.setattr(te._Prefilled, "rows", _aliasing_copy)
    fresh = with_reuse(tiny, True)
    on, reason = fresh._probe_prefix_reuse()
    assert not on and ("failed" in reason or "differ" in reason), reason
    assert fresh.prefix_reuse_status() == {"prefix_reuse": False, "prefix_reuse_reason": reason}


def test_the_probe_turns_reuse_off_when_a_parents_padding_is_attended(tiny, monkeypatch):
    """A broken layout where the parent's padding columns are unmasked for its children: only a
    parent batch with padding of its own shows it, and the probe has one."""
    from rlaif.backends import transformers_engine as te

    real_init = te._Prefilled.__init__

    def unmasked(self, cache, mask, row_of):
        real_init(self, cache, torch.ones_like(mask), row_of)

    monkeypatch.setattr(te._Prefilled, "__init__", unmasked)
    on, reason = with_reuse(tiny, True)._probe_prefix_reuse()
    assert not on and "differ" in reason, reason


class _NoPositionsGPT2(torch.nn.Module):
    """GPT-2 (absolute positions) behind a forward that takes neither position_ids nor **kwargs."""

    def __init__(self, net):
        super().__init__()
        self.inner, self.config = net, net.config

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep)


def test_a_forward_without_position_ids_is_never_left_padded(gpt2):
    """Such a forward cannot be told where a left-padded row starts: its prompts are batched by
    length (no padding), so a batch scores each prompt as it scores alone; prefix reuse is off and
    the status says why."""
    eng = TransformersEngine(EngineConfig(model="gpt2-no-positions", device="cpu"), model=_NoPositionsGPT2(gpt2.net),
                             tokenizer=gpt2.tokenizer)
    reqs = [OptionRequest([{"role": "user", "content": t}], "The answer is (")
            for t in ("Say hi.", "Tell me a much longer story about the sea and the moon.", "Why?")]
    together = eng.option_logprobs(reqs, ["A", "B"])
    alone = [eng.option_logprobs([r], ["A", "B"])[0] for r in reqs]
    for a, b in zip(together, alone):
        assert dict(a) == pytest.approx(dict(b), abs=1e-5)
    status = eng.prefix_reuse_status()
    assert status["prefix_reuse"] is False and "position_ids" in status["prefix_reuse_reason"]
