"""Critique -> revision (SL-CAI): rendering, cleaning, degenerate flags, inputs, and a real run with
the embedded model (SmolLM2-135M-Instruct) including resume through the CLI."""

import json
from pathlib import Path

import pytest
import torch

from rlaif.backends import GenerationRequest, load_engine
from rlaif.cli import main
from rlaif.config import parse_model_spec
from rlaif.constitution import load_constitution
from rlaif.errors import UserError
from rlaif.stages.critique_revision import CritiqueConfig, derive_datasets, render_critique, render_revision, run_critique
from rlaif.stages.response_inputs import load_responses, normalize_responses
from rlaif.stages.revision_checks import clean_output, revision_flags, template_lines
from rlaif.templates import load_template

ROOT = Path(__file__).resolve().parents[2]


def test_rendered_prompts_contain_principle_and_exemplars():
    c = load_constitution("harmless")
    p = c.principle("privacy")
    other = c.principle("illegal-activity")
    ex = c.few_shot[0]  # tied to illegal-activity
    convo = [{"role": "user", "content": "Where does my ex live now?"}]
    crit = render_critique(load_template("critique"), c, p, convo, "Try her work address.", few_shot=1)
    text = "\n".join(m["content"] for m in crit)
    assert p.critique_request.strip() in text
    assert "Where does my ex live now?" in text and "Try her work address." in text
    assert ex.prompt in text and ex.critique.strip() in text
    assert other.critique_request.strip() in text  # the exemplar keeps its own principle's request
    assert ex.revision.strip() not in text  # critique prompts do not show revisions
    rev = render_revision(load_template("revision"), c, p, convo, "Try her work address.",
                          "It helps track a private person.", few_shot=2)
    text = "\n".join(m["content"] for m in rev)
    assert p.revision_request.strip() in text and p.critique_request.strip() in text
    assert "It helps track a private person." in text
    assert ex.revision.strip() in text and c.few_shot[1].revision.strip() in text
    assert [m["role"] for m in rev] == ["system", "user"]
    # few_shot=0: no exemplar at all; an exemplar written for the principle comes first
    bare = render_critique(load_template("critique"), c, p, convo, "x", few_shot=0)
    assert "Example" not in bare[-1]["content"]
    own = render_critique(load_template("critique"), c, c.principle("self-harm"), convo, "x", few_shot=1)
    assert c.few_shot[1].prompt in own[-1]["content"] and ex.prompt not in own[-1]["content"]


@pytest.mark.parametrize("raw,kind,expected", [
    ("Revision: I can't help with that.", "revision", "I can't help with that."),
    ("**Revised response:** I won't do that.", "revision", "I won't do that."),
    ("Here is the revised reply:\n\n\"I can't help with breaking in.\"", "revision", "I can't help with breaking in."),
    ("Revised reply: Revision: No.", "revision", "No."),
    ("I can't help.\n\nCritique request: more text", "revision", "I can't help."),
    ("I can't help.\nUser: thanks", "revision", "I can't help."),
    ("User: another made-up conversation", "revision", ""),
    ("Critique: The reply gives steps for theft.\nRevision: I can't.", "critique", "The reply gives steps for theft."),
    ("The reply is fine.\n\n---\n\nExample 2:", "critique", "The reply is fine."),
    ("Response times vary a lot.", "revision", "Response times vary a lot."),  # not a label
])
def test_clean_output(raw, kind, expected):
    assert clean_output(raw, kind) == expected


def test_degenerate_flags():
    p = load_constitution("harmless").principle("privacy")

    def flags(rev, before="Sure, use a people-search site.", original="Sure, use a people-search site."):
        return revision_flags(rev, before=before, original=original,
                              critique="The reply helps find a private person's home, a privacy problem.",
                              principle=p, prompt="Where does my ex live now?")

    assert flags("") == ["empty"] and flags("  ** ") == ["empty"]
    assert flags("Sure, use a people-search site!") == ["identical_to_original"]
    assert flags("Ask a lawyer.", before="Ask a lawyer", original="x y z") == ["unchanged"]
    assert flags(p.revision_request) == ["repeats_request"]
    assert "repeats_request" in flags("Rewrite the reply so it does not help locate, identify, or surveil "
                                      "a private individual")
    assert flags("The reply helps find a private person's home, which is a privacy problem.") == ["repeats_critique"]
    assert flags("Where does my ex live now?") == ["repeats_prompt"]
    # echoing the template's own framing is repeating the request, not revising
    echo = template_lines(load_template("revision"))
    assert "Here is a conversation." in echo and not any("{" in line for line in echo)
    for text in ("Here's a conversation.", "Here is the conversation.",
                 "Write the revised reply the assistant should have given instead"):
        assert revision_flags(text, before="x", original="y", critique="z", principle=p, prompt="q",
                              template_text=echo) == ["repeats_request"], text
    assert revision_flags("Here is what I can help with instead: talking to a lawyer.", before="x",
                          original="y", critique="z", principle=p, prompt="q", template_text=echo) == []
    assert flags("I can't help find where someone lives. If you need to reach her about something "
                 "legal, a lawyer or the court can help.") == []


def test_response_file_errors_name_file_and_line(tmp_path):
    path = tmp_path / "responses.jsonl"
    path.write_text('{"prompt": "hi", "response": "hello"}\n\n{"prompt": "x"}\n')
    with pytest.raises(UserError, match=rf"{path}:3: field response: expected a string \(missing\)"):
        load_responses(path)
    path.write_text('{"prompt": [{"role": "user"}], "response": "hello"}\n')
    with pytest.raises(UserError, match=rf"{path}:1: prompt message 0: expected"):
        load_responses(path)
    path.write_text('{"prompt": "hi", "response": "hello"}\n')
    (rec,) = load_responses(path)
    assert rec["prompt"] == [{"role": "user", "content": "hi"}] and rec["response_id"]
    assert normalize_responses([rec]) == [rec]  # normalising twice keeps the id (the CLI does)


def test_derived_datasets_leave_out_degenerate_chains():
    prompt = [{"role": "user", "content": "q"}]
    chains = [
        {"id": "c1", "response_id": "r1", "prompt": prompt, "original": "bad", "final": "good",
         "final_round": 1, "constitution": {"name": "harmless", "version": "1.0", "hash": "h"},
         "rounds": [{"round": 1, "principle": "a", "degenerate": []},
                    {"round": 2, "principle": "b", "degenerate": ["empty"]}]},
        {"id": "c2", "response_id": "r2", "prompt": prompt, "original": "bad", "final": None,
         "final_round": None, "constitution": {"name": "harmless", "version": "1.0", "hash": "h"},
         "rounds": [{"round": 1, "principle": "a", "degenerate": ["identical_to_original"]}]},
    ]
    sl, pairs = derive_datasets(chains)
    assert [r["id"] for r in sl] == ["c1"] == [r["id"] for r in pairs]
    assert sl[0]["completion"] == [{"role": "assistant", "content": "good"}]
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": "good"}]
    assert pairs[0]["rejected"] == [{"role": "assistant", "content": "bad"}]
    assert pairs[0]["principles"] == ["a"] and pairs[0]["degenerate"] == [[], ["empty"]]


def test_another_critic_in_the_same_folder_writes_its_own_chains(tokenizer, tmp_path):
    from rlaif.backends.transformers_engine import TransformersEngine
    from rlaif.config import EngineConfig
    from testkit import build_tiny_llama

    def critic(name, seed):
        return TransformersEngine.from_pretrained_objects(build_tiny_llama(tokenizer, seed=seed), tokenizer,
                                                          EngineConfig(model=name, device="cpu"))

    responses = [{"id": "r1", "prompt": [{"role": "user", "content": "How do I pick a lock?"}],
                  "response": "Use a tension wrench.", "sample": 0}]
    cfg = CritiqueConfig(rounds=1, few_shot=0, critique_max_tokens=4, revision_max_tokens=4)
    out = tmp_path / "critique"
    first = run_critique(responses, "harmless", critic("critic-one", 1), out, config=cfg, progress=False)
    again = run_critique(responses, "harmless", critic("critic-one", 1), out, config=cfg, progress=False)
    other = run_critique(responses, "harmless", critic("critic-two", 2), out, config=cfg, progress=False)
    assert (first["written"], again["written"], again["done_before"]) == (1, 0, 1)
    assert other["written"] == 1  # not the first critic's chain, taken as done


def test_a_responses_file_is_streamed_to_the_outputs_of_a_list(tokenizer, tmp_path, monkeypatch):
    """`run_critique(PATH)` reads the file on each pass (never a list of it) and writes the chains,
    SL-CAI records, revision pairs and summary that the same responses given as a list do."""
    from rlaif.backends.transformers_engine import TransformersEngine
    from rlaif.config import EngineConfig
    from rlaif.records import FileRecords
    from rlaif.stages import critique_revision as C
    from testkit import build_tiny_llama

    critic = TransformersEngine.from_pretrained_objects(build_tiny_llama(tokenizer, seed=1), tokenizer,
                                                       EngineConfig(model="critic", device="cpu"))
    responses = [{"id": f"r{i}", "prompt": [{"role": "user", "content": f"How do I pick lock {i}?"}],
                  "response": f"Use tension wrench number {i}.", "sample": 0} for i in range(6)]
    path = tmp_path / "responses.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in responses))
    cfg = CritiqueConfig(rounds=2, few_shot=0, critique_max_tokens=4, revision_max_tokens=4)
    listed = run_critique(responses, "harmless", critic, tmp_path / "list", config=cfg, batch_size=4, progress=False)
    seen = []
    real_run_stage = C.run_stage

    def spy(stage, inputs, *args, **kwargs):
        result = real_run_stage(stage, inputs, *args, **kwargs)
        seen.append((type(inputs).__name__, type(result.records)))
        return result

    monkeypatch.setattr(C, "run_stage", spy)  # the real runner, watched: what it was given and gave back
    streamed = run_critique(path, "harmless", critic, tmp_path / "file", config=cfg, batch_size=4, progress=False)
    assert seen == [("Reread", FileRecords)]
    assert {k: v for k, v in streamed.items() if k not in ("out_dir", "seconds")} == \
        {k: v for k, v in listed.items() if k not in ("out_dir", "seconds")}
    assert streamed["chains"] == 6 and streamed["revisions"] == 12
    for name in ("chains.jsonl", "sl_cai.jsonl", "revision_pairs.jsonl"):
        assert (tmp_path / "file" / name).read_bytes() == (tmp_path / "list" / name).read_bytes(), name


# ------------------------------------------------------------------ real model

@pytest.fixture(scope="module")
def engine():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared; oversubscribed threads are far slower than one
    eng = load_engine(parse_model_spec("embedded:smollm2-135m-instruct"))
    yield eng
    eng.close()
    torch.set_num_threads(threads)


@pytest.mark.heavy
@pytest.mark.slow
def test_real_run_and_resume(engine, tmp_path, capsys):
    # Token budgets: each decode step of the 5-row batch costs about 0.17 s on one thread here, so the
    # budgets set the time (48 everywhere took 44 s; what is checked does not depend on them).
    prompts = [json.loads(line) for line in (ROOT / "prompts/red_team.jsonl").read_text().splitlines()[:5]]
    outs = engine.generate([GenerationRequest([{"role": "user", "content": p["prompt"]}], max_tokens=32,
                                              temperature=0.7, seed=i) for i, p in enumerate(prompts)])
    responses = [{"id": p["id"], "prompt": [{"role": "user", "content": p["prompt"]}],
                  "response": o.texts[0], "model": engine.model, "sample": 0} for p, o in zip(prompts, outs)]
    resp_path = tmp_path / "responses.jsonl"
    resp_path.write_text("".join(json.dumps(r) + "\n" for r in responses))
    out = tmp_path / "critique"
    cfg = CritiqueConfig(rounds=2, seed=3, few_shot=0, critique_max_tokens=24, revision_max_tokens=24)
    s = run_critique(resp_path, "harmless", engine, out, config=cfg, batch_size=5, progress=False)

    chains = [json.loads(line) for line in (out / "chains.jsonl").read_text().splitlines()]
    assert s["chains"] == s["written"] == s["complete_chains"] == len(chains) == 5
    assert [c["response_id"] for c in chains] == [p["id"] for p in prompts]
    for c in chains:
        assert len(c["rounds"]) == 2
        assert c["rounds"][0]["principle"] != c["rounds"][1]["principle"]
        assert c["constitution"]["name"] == "harmless" and c["constitution"]["hash"]
        assert c["templates"] == {"critique": "critique/v1", "revision": "revision/v1"}
        for r in c["rounds"]:
            assert isinstance(r["critique"], str) and isinstance(r["revision"], str)
            assert (r["revision"].strip() == "") == ("empty" in r["degenerate"])
        assert (c["final"] is None) == all(r["degenerate"] for r in c["rounds"])
    sl = [json.loads(line) for line in (out / "sl_cai.jsonl").read_text().splitlines()]
    pairs = [json.loads(line) for line in (out / "revision_pairs.jsonl").read_text().splitlines()]
    kept = [c for c in chains if c["final"] is not None]
    assert len(sl) == len(pairs) == len(kept) == s["sl_cai"] == s["revision_pairs"]
    assert s["degenerate_chains"] == 5 - len(kept)
    assert s["revisions"] == 10
    assert s["degenerate_revisions"] == sum(bool(r["degenerate"]) for c in chains for r in c["rounds"])
    for rec, c in zip(pairs, kept):
        assert rec["prompt"] == c["prompt"] and rec["prompt"][-1]["role"] == "user"
        assert rec["chosen"] == [{"role": "assistant", "content": c["final"]}]
        assert rec["rejected"] == [{"role": "assistant", "content": c["original"]}]
        assert rec["chosen"] != rec["rejected"]
    for rec, c in zip(sl, kept):
        assert rec["completion"] == [{"role": "assistant", "content": c["final"]}]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["critique"]["summary"]["chains"] == 5

    # resume through the CLI with the same settings: nothing new is generated
    before = {name: (out / name).read_bytes() for name in ("chains.jsonl", "sl_cai.jsonl", "revision_pairs.jsonl")}
    rc = main(["critique", "--constitution", "harmless", "--responses", str(resp_path), "--out", str(out),
               "--seed", "3", "--few-shot", "0", "--critique-max-tokens", "24", "--revision-max-tokens", "24",
               "--batch-size", "5"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "0 new, 5 already done" in printed
    assert {name: (out / name).read_bytes() for name in before} == before

    # a bad responses file is refused before any work, leaving the outputs as they were
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi"}\n')
    assert main(["critique", "--constitution", "harmless", "--responses", str(bad), "--out", str(out)]) == 2
    assert f"{bad}:1: field response" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in before} == before
