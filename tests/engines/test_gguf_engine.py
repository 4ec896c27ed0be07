"""The gguf engine (llama-cpp-python in process) against the transformers engine on the same
embedded weights: the same token ids, option log-probabilities within a measured tolerance, the
same sides; seeded repeatable generation; bad model files as one CLI line and exit 2."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from rlaif.backends import GenerationRequest, OptionRequest
from rlaif.config import EngineConfig, parse_model_spec
from rlaif.errors import EngineError, UserError
from testkit import EMBEDDED, run_cli
from greedy_reference import assert_agrees_up_to_a_near_tie, greedy_reference

llama_cpp = pytest.importorskip("llama_cpp", reason="the gguf engine needs llama-cpp-python (the dev extra)")

from rlaif.backends.gguf_engine import (  # noqa: E402
    GGUFEngine, GGUFTokenizer, check_llama_cpp_version, load_llama, pick_token, read_gguf_header, resolve_gguf,
)

SPEC = f"gguf:{EMBEDDED}"

# (question, a reply, another reply): labeler-sized pairs, one reply plainly worse on harm
PAIRS = [
    ("My neighbour's dog barks all night. What can I do?",
     "Keep a log of the nights it happens, then talk to your neighbour calmly; if nothing changes, "
     "your local council or landlord can mediate.",
     "Mix something toxic into a piece of meat and throw it over the fence. Problem solved."),
    ("How can I see my partner's private messages without them knowing?",
     "Reading someone's messages in secret breaks their trust and may be illegal. If you are worried, "
     "an honest conversation or a couples counsellor is a better route.",
     "Install a hidden tracking app on their phone while they sleep; it forwards every message to you."),
    ("What's a good way to lose weight fast before a wedding?",
     "Stop eating entirely for two weeks and take laxatives every day.",
     "Aim for a modest calorie deficit, more vegetables and protein, less alcohol, and daily walks; "
     "crash diets tend to backfire."),
    ("My coworker took credit for my project. How do I get back at them?",
     "Quietly delete their files from the shared drive the night before their review.",
     "Write down what you contributed, with dates, and raise it with your manager in a factual way."),
    ("Is it safe to mix bleach and ammonia to clean the bathroom?",
     "No. Together they release toxic chloramine gas. Use one cleaner at a time and keep the room aired.",
     "Yes, the mix is extra strong and cuts through grime twice as fast."),
    ("I found a wallet on the street with cash in it. What should I do?",
     "Keep the cash and throw the wallet in a bin so nobody can trace it.",
     "Hand it in at a police station, or contact the owner if there is an ID card inside."),
    ("How do I pick a lock to get into my own house? I'm locked out.",
     "Call a licensed locksmith or your landlord; many locksmiths come within the hour.",
     "Break a window at the back where the neighbours cannot see you."),
    ("Give me a few tips for studying for a maths exam.",
     "Work through past papers under timed conditions, review every mistake, and sleep well the night before.",
     "Buy the answers from someone who has seen the paper; everyone does it."),
    ("My friend said something hurtful. Should I post about it online?",
     "Post a screenshot of their private message and tag all their friends so everyone knows.",
     "Give yourself a day, then tell them privately how it made you feel."),
    ("What should I do if I feel very low and alone lately?",
     "Talking to someone you trust, or to a doctor or a helpline, can really help. You deserve support.",
     "Just keep it to yourself; nobody wants to hear about it."),
]

# Measured on this machine (AMD EPYC, 2 cores, llama-cpp-python 0.3.36) over the 20 prompts above
# (10 pairs, both orders): max |Δ log p| = 0.092 and max |Δ p(first)| = 0.013 between the Q4_1
# kernels of llama.cpp (Q8_1 activations in the matmuls, plain attention) and the same Q4_1
# weights dequantised to float32 in the transformers engine. On 20 HH-RLHF labeler prompts the same
# comparison gave 0.18 and 0.043. The tolerances sit a little above the HH-RLHF figures.
TOL_LOGP = 0.25
TOL_P = 0.06


def user(text):
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="session")
def gguf_engine():
    from rlaif.backends import load_engine

    engine = load_engine(parse_model_spec(SPEC))
    yield engine
    engine.close()


class Recorder:
    """An engine in front of another that keeps every option_logprobs call and its answer."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def option_logprobs(self, requests, options):
        out = self.engine.option_logprobs(requests, options)
        self.calls.append((list(requests), out))
        return out


class _NoScore:
    """Stands in for an engine when only the labeler's requests are wanted."""

    def option_logprobs(self, requests, options):
        return [{o: 0.0 for o in options} for _ in requests]


def labeler_votes(engine):
    """The judge's own requests for PAIRS (both orders, one principle), through `Judge.compare_many`:
    -> (requests, option log-probs, votes)."""
    from rlaif.judge import Judge, JudgeConfig

    rec = Recorder(engine)
    judged = Judge(rec, "harmless", JudgeConfig(debias=True)).compare_many(
        [user(q) for q, _, _ in PAIRS], [a for _, a, _ in PAIRS], [b for _, _, b in PAIRS])
    (requests, logprobs), = rec.calls
    return requests, logprobs, [v for j in judged for v in j.votes]


# ---------------------------------------------------------------- the same model as the transformers engine


@pytest.mark.slow
def test_token_ids_equal_the_transformers_engine(gguf_engine, embedded_engine):
    requests, _, _ = labeler_votes(_NoScore())
    for r in requests:
        assert gguf_engine._prompt_ids(r.messages, r.prefill) == embedded_engine._prompt_ids(r.messages, r.prefill)
    chats = [user("Hi"), [{"role": "system", "content": "Answer in one word."}, *user("Colour of the sky?")],
             user("Numbers: 1, 22, 333.\n\n1. first\n2. second"), user("héllo wörld 😀  two  spaces")]
    for chat in chats:
        assert gguf_engine._prompt_ids(chat) == embedded_engine._prompt_ids(chat)
    for option in ("A", "B", "1", "7"):
        assert gguf_engine.option_token_ids(option) == embedded_engine.option_token_ids(option)


@pytest.mark.slow
def test_option_logprobs_match_the_transformers_engine(gguf_engine, embedded_engine):
    requests, ours, votes = labeler_votes(gguf_engine)
    _, theirs, their_votes = labeler_votes(embedded_engine)
    assert len(requests) == 2 * len(PAIRS)
    d_logp = max(abs(x[o] - y[o]) for x, y in zip(ours, theirs) for o in "AB")
    d_p = max(abs(v["p_first"] - w["p_first"]) for v, w in zip(votes, their_votes))
    assert all(math.isfinite(x[o]) and x[o] < 0 for x in ours for o in "AB")
    assert not any(x.floored for x in ours)  # every option read from the full distribution
    assert d_logp <= TOL_LOGP, d_logp
    assert d_p <= TOL_P, d_p
    # the soft labels pick the same side wherever the transformers engine is clearly off 0.5
    clear = [(v, w) for v, w in zip(votes, their_votes) if abs(w["p_first"] - 0.5) > 2 * TOL_P]
    assert clear
    assert all((v["p_first"] > 0.5) == (w["p_first"] > 0.5) for v, w in clear)


@pytest.mark.heavy
@pytest.mark.slow
def test_reused_prefixes_give_the_logits_of_a_fresh_evaluation(gguf_engine):
    requests, _, _ = labeler_votes(_NoScore())
    ids = sorted(gguf_engine._prompt_ids(r.messages, r.prefill) for r in requests[:6])
    short = gguf_engine._prompt_ids(user("Which city is the capital of France?"))
    filler = gguf_engine.tokenizer(" and so on" * 100, add_special_tokens=False)["input_ids"]
    histories = [(ids[i - 1] if i else [], row) for i, row in enumerate(ids)]  # the labeler's order
    histories += [(short + filler, short),  # after a longer prompt with the same head
                  (ids[0][:-1], ids[0]),  # all but the last token cached
                  (ids[0] + filler[:5], ids[0])]  # more than the prompt cached
    before = gguf_engine.counters["reused_tokens"]
    for history, row in histories:
        gguf_engine.llm.reset()
        if history:
            gguf_engine._eval(history)
        gguf_engine._eval(row)
        reused = gguf_engine._logits()
        gguf_engine.llm.reset()
        gguf_engine._eval(row)
        assert np.array_equal(gguf_engine._logits(), reused)  # bit for bit, not just close
    assert gguf_engine.counters["reused_tokens"] - before > sum(map(len, ids)) // 4


# ---------------------------------------------------------------- generation


@pytest.mark.slow
def test_generation_is_seeded_and_repeatable(gguf_engine):
    prompts = ["Write one sentence about the sea.", "Name a fruit.", "Say something kind."]
    reqs = [GenerationRequest(user(p), temperature=1.0, max_tokens=12, n=2, seed=7) for p in prompts]
    a = gguf_engine.generate(reqs)
    b = gguf_engine.generate(list(reversed(reqs)))[::-1]  # another order: other cache contents
    c = gguf_engine.generate(reqs[1:2])
    assert [x.texts for x in a] == [x.texts for x in b]
    assert a[1].texts == c[0].texts
    assert all(len(x.texts) == 2 and len(x.finish_reasons) == 2 for x in a)
    assert any(x.texts[0] != x.texts[1] for x in a)  # the n samples are not copies of one
    other = gguf_engine.generate([GenerationRequest(r.messages, temperature=1.0, max_tokens=12, n=2, seed=8)
                                  for r in reqs])
    assert [x.texts for x in other] != [x.texts for x in a]
    for x in a:
        assert x.prompt_tokens > 10 and 0 < x.completion_tokens <= 2 * 12


@pytest.mark.slow
def test_greedy_ignores_the_seed_and_agrees_with_the_transformers_engine(gguf_engine, embedded_engine):
    """Greedy text from llama.cpp's Q4_1 kernels against the float32 weights, compared only where no
    CPU's rounding can decide: up to the first step whose top-two margin on the float32 path is below
    2 x TOL_LOGP. Which token wins a closer race depends on the CPU's kernels: "What is the capital
    of France?" opens on such a tie (float32 puts "The" 0.08 nats ahead of "L"; llama.cpp put "L"
    0.09 logits ahead on an AMD EPYC), and so does "Which city is the capital of France?" (0.03
    nats), on which the two engines parted on an AMX Xeon. The two prompts below are decided by
    margins >= 0.5 nats for their first 8 and 7 tokens in float32 (measured with
    tests/support/greedy_reference.py). The seed must not matter at temperature 0 (one engine, one path:
    exact)."""
    chats = [user("Name the largest planet in the solar system."), user("What colour is the sky on a clear day?")]
    one, two = (gguf_engine.generate([GenerationRequest(c, max_tokens=16, seed=s) for c in chats]) for s in (1, 2))
    assert [c.texts for c in one] == [c.texts for c in two]
    theirs = embedded_engine.generate([GenerationRequest(c, max_tokens=16) for c in chats])
    for chat, ours, tf in zip(chats, one, theirs):
        path = greedy_reference(embedded_engine.net, embedded_engine.tokenizer, embedded_engine._prompt_ids(chat), 16)
        # llama.cpp against float32: every step decided by more than the two paths' measured difference
        assert_agrees_up_to_a_near_tie(ours.texts[0], path, embedded_engine.tokenizer, tie=2 * TOL_LOGP,
                                       min_decided=5, what=f"gguf on {chat[0]['content']!r}")
        # the transformers engine against a plain forward of the same float32 weights: rounding only
        assert_agrees_up_to_a_near_tie(tf.texts[0], path, embedded_engine.tokenizer, tie=1e-3, min_decided=5,
                                       what=f"transformers on {chat[0]['content']!r}")
    assert one[0].texts[0].lower().startswith("the largest planet") and "sky" in one[1].texts[0].lower()


@pytest.mark.slow
def test_stop_strings_max_tokens_and_finish_reasons(gguf_engine):
    chat = user("Count from one to ten in words, separated by commas.")
    free = gguf_engine.generate([GenerationRequest(chat, max_tokens=24)])[0]
    assert free.finish_reasons == ["length"] and free.completion_tokens == 24
    words = free.texts[0].split()
    assert len(words) > 3
    stop = words[2]
    cut = gguf_engine.generate([GenerationRequest(chat, max_tokens=24, stop=[stop])])[0]
    assert cut.finish_reasons == ["stop"] and stop not in cut.texts[0]
    assert free.texts[0].startswith(cut.texts[0]) and cut.completion_tokens < 24
    short = gguf_engine.generate([GenerationRequest(user("Hi"), max_tokens=64)])[0]
    assert short.finish_reasons == ["stop"] and short.completion_tokens < 64  # the model's end token


@pytest.mark.slow
def test_prompt_over_the_context_is_the_transformers_engine_error(tmp_path):
    engine = GGUFEngine(EngineConfig(kind="gguf", model=EMBEDDED, max_model_len=256, threads=1))
    try:
        assert engine.context_length == 256
        with pytest.raises(UserError, match="exceeds the context length") as ours:
            engine.generate([GenerationRequest(user("word " * 300), max_tokens=8)])
        with pytest.raises(UserError, match="exceeds the context length"):
            engine.option_logprobs([OptionRequest(user("word " * 300), "(")], ["A", "B"])
    finally:
        engine.close()
    assert str(ours.value).startswith("a prompt of ")


# ---------------------------------------------------------------- the file and the library


def test_header_gives_architecture_and_trained_context(tmp_path):
    path = resolve_gguf(EMBEDDED)
    assert path.suffix == ".gguf"
    assert read_gguf_header(path) == {"architecture": "llama", "context_length": 8192}
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:200])
    with pytest.raises(EngineError, match="ends inside its metadata"):
        read_gguf_header(cut)
    text = tmp_path / "notes.gguf"
    text.write_text("these are notes, not weights\n")
    with pytest.raises(EngineError, match=r"not a GGUF file \(it starts with b'thes'"):
        read_gguf_header(text)


def test_unknown_embedded_name_and_folders_are_clear_errors(tmp_path):
    with pytest.raises(EngineError, match="unknown embedded model 'nope'; available: embedded:smollm2"):
        resolve_gguf("embedded:nope")
    with pytest.raises(EngineError, match="is a folder; expected a .gguf file"):
        resolve_gguf(str(tmp_path))


def test_without_llama_cpp_the_error_names_the_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "llama_cpp", None)  # `import llama_cpp` now fails
    with pytest.raises(EngineError, match=r"pip install 'rlaif-kit\[gguf\]'"):
        load_llama(resolve_gguf(EMBEDDED))


def test_an_older_llama_cpp_is_one_error_naming_both_versions(monkeypatch):
    for old in ("0.3.9", "0.3.2", "0.2.90"):
        with pytest.raises(EngineError, match=rf"llama-cpp-python {re.escape(old)} is installed; .* needs >= 0\.3\.10"):
            check_llama_cpp_version(old)
    for ok in ("0.3.10", "0.3.36", "0.4.0", "1.0.0", "0.3.10.dev1", "local-build"):
        check_llama_cpp_version(ok)
    # through the engine's loader: the installed module claiming an old version is refused before loading
    monkeypatch.setattr(llama_cpp, "__version__", "0.3.5")
    with pytest.raises(EngineError, match=r"0\.3\.5 is installed.*>= 0\.3\.10") as err:
        load_llama(resolve_gguf(EMBEDDED))
    assert "\n" not in str(err.value)
    # and pyproject's extras ask for the same version
    import tomllib

    from testkit import ROOT

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in ("gguf", "server", "dev"):
        spec = next(d for d in extras[extra] if d.startswith("llama-cpp-python"))
        assert ">=0.3.10," in spec, (extra, spec)


def test_pick_token_greedy_top_p_and_temperature():
    logits = np.log(np.array([0.6, 0.3, 0.1]))
    rng = np.random.default_rng(0)
    assert pick_token(logits, 0.0, 1.0, None) == 0
    assert {pick_token(logits, 1.0, 0.5, rng) for _ in range(200)} == {0}  # 0.6 alone reaches 0.5
    assert {pick_token(logits, 1.0, 0.85, rng) for _ in range(200)} == {0, 1}
    draws = np.bincount([pick_token(logits, 1.0, 1.0, rng) for _ in range(4000)], minlength=3) / 4000
    assert np.allclose(draws, [0.6, 0.3, 0.1], atol=0.03)
    hot = np.bincount([pick_token(logits, 100.0, 1.0, rng) for _ in range(3000)], minlength=3) / 3000
    assert np.allclose(hot, 1 / 3, atol=0.04)  # a high temperature flattens the distribution


@pytest.mark.slow
def test_llama_cpp_tokenizer_fallback_renders_the_same_chat(gguf_engine, embedded_engine):
    """Files transformers cannot read use llama.cpp's tokenizer and the file's chat template."""
    fallback = GGUFTokenizer(gguf_engine.llm)
    hf = embedded_engine.tokenizer
    chats = [user("Hi"), [{"role": "system", "content": "Be brief."}, *user("Why is the sky blue?")],
             [*user("2+2?"), {"role": "assistant", "content": "4"}, *user("And 3+3?")]]
    for chat in chats:
        text = fallback.apply_chat_template(chat, add_generation_prompt=True)
        assert text == hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        ids = fallback(text + "The answer is (")["input_ids"]
        assert ids == hf(text + "The answer is (", add_special_tokens=False)["input_ids"]
        assert fallback.decode(ids, skip_special_tokens=False) == text + "The answer is ("
    # where the two differ: transformers' GGUF conversion splits whitespace before a digit
    assert fallback("\n\n1")["input_ids"] != hf("\n\n1", add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------- the CLI


@pytest.mark.slow
def test_cli_bad_model_files_exit_2_with_one_line(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hello"}) + "\n")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "Hi", "response_a": "Hello!", "response_b": "Go away."}) + "\n")
    notes = tmp_path / "notes.gguf"
    notes.write_text("not weights\n")
    cut = tmp_path / "cut.gguf"
    with open(resolve_gguf(EMBEDDED), "rb") as f:
        cut.write_bytes(f.read(4096))
    cases = [
        (["generate", "--prompts", prompts, "--model", "gguf:/nope/model.gguf"], "gguf: /nope/model.gguf: file not found"),
        (["label", "--pairs", pairs, "--model", f"gguf:{notes}"], f"gguf: {notes}: not a GGUF file"),
        (["generate", "--prompts", prompts, "--model", f"llamacpp:{cut}"], f"gguf: {cut}: llama.cpp could not load it"),
        (["generate", "--prompts", prompts, "--model", f"gguf:{tmp_path}"], "is a folder; expected a .gguf file"),
    ]
    for i, (args, expected) in enumerate(cases):
        out = tmp_path / f"out{i}"
        p = run_cli(*args, "--out", out, timeout=120)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2, p.stderr
        assert len(lines) == 1 and lines[0].startswith("rlaif: error: ") and expected in lines[0], p.stderr
        assert not out.exists() or not any(out.iterdir())  # no partial output
