"""Issue 8, bad inputs: a table of malformed inputs across the commands. Each must give exit code 2,
exactly one `rlaif: error:` line naming the file (and line or field) and what was expected, no
traceback, and leave an existing output folder byte for byte as it was.

Run in this process through `rlaif.cli.main` (fast); the few that need a real process say so.
"""

from __future__ import annotations

import gzip
import json
import shutil

import pytest

from reliability_helpers import free_port, in_process, one_error_line, tree_hash, write_pairs, write_prompts

pytestmark = pytest.mark.slow

GOOD_CONSTITUTION = """\
name: tiny
version: "1"
description: a small test constitution
principles:
  - id: kind
    critique_request: Say what is unkind.
    revision_request: Rewrite it kindly.
    comparison_question: Which reply is kinder?
"""


def _constitution(text_or_bytes):
    return lambda d: _write(d / "const.yaml", text_or_bytes)


def _write(path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The files every case can point at, written once."""
    d = tmp_path_factory.mktemp("inputs")
    write_prompts(d / "good.jsonl", 2)
    write_pairs(d / "pairs.jsonl", 2)
    _write(d / "const.yaml", GOOD_CONSTITUTION)
    (d / "a_file.txt").write_text("I am a file, not a folder\n")
    (d / "modeldir-noconfig").mkdir()
    (d / "modeldir-noconfig" / "README").write_text("no config here")
    return d


@pytest.fixture
def previous_run(tmp_path):
    """An output folder holding the results of an earlier run (records, manifest, failures)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "responses.jsonl").write_text('{"id": "r1", "response": "kept"}\n{"id": "r2", "response": "kept too"}\n')
    (out / "labels.jsonl").write_text('{"id": "l1", "p_a": 0.7}\n')
    (out / "preferences.jsonl").write_text('{"id": "l1", "p_chosen": 0.7}\n')
    (out / "chains.jsonl").write_text('{"id": "c1", "final": "kept"}\n')
    (out / "failures.jsonl").write_text('{"stage": "responses", "id": "r3", "reason": "HTTP 503", "attempts": 7}\n')
    (out / "manifest.json").write_text(json.dumps({"stages": {"responses": {"complete": False}}}, indent=2) + "\n")
    return out


# Each case: (name, files to write {name: content}, argv builder, substrings the error line must hold).
# In argv, "{d}" is the case's folder, "{f}" the shared files folder, "{tiny}" the tiny model,
# "{out}" the existing output folder.
long_prompt = " ".join(f"word{i}" for i in range(700))
GEN = ["generate", "--out", "{out}", "--model", "{tiny}"]
LABEL = ["label", "--out", "{out}", "--model", "{tiny}", "--pairs", "{f}/pairs.jsonl"]
CRIT = ["critique", "--out", "{out}", "--model", "{tiny}", "--constitution", "{f}/const.yaml"]
RUN = ["run", "--out", "{out}"]

CASES = [
    # ---- prompt files (generate)
    ("prompts missing", {}, GEN + ["--prompts", "{d}/nope.jsonl"], ["nope.jsonl", "no such file"]),
    ("prompts empty", {"p.jsonl": "\n\n  \n"}, GEN + ["--prompts", "{d}/p.jsonl"], ["p.jsonl", "no prompts", "expected"]),
    ("prompts broken JSONL line", {"p.jsonl": '{"prompt": "a"}\n{"prompt": "b"\n'}, GEN + ["--prompts", "{d}/p.jsonl"],
     ["p.jsonl:2", "invalid JSON", "expected one JSON object per line"]),
    ("prompts line without prompt field", {"p.jsonl": '{"prompt": "a"}\n{"text": "b"}\n'}, GEN + ["--prompts", "{d}/p.jsonl"],
     ["p.jsonl:2", "'prompt' field"]),
    ("prompts JSON array line", {"p.jsonl": '{"prompt": "a"}\n["b"]\n'}, GEN + ["--prompts", "{d}/p.jsonl"], ["p.jsonl:2", "expected"]),
    ("prompts not UTF-8", {"p.txt": b"hello\n\xff\xfe caf\xe9\n"}, GEN + ["--prompts", "{d}/p.txt"], ["p.txt", "not UTF-8", "byte"]),
    ("prompt empty string", {"p.jsonl": '{"prompt": "   "}\n'}, GEN + ["--prompts", "{d}/p.jsonl"], ["p.jsonl:1", "empty prompt"]),
    ("prompt wrong type", {"p.jsonl": '{"prompt": 42}\n'}, GEN + ["--prompts", "{d}/p.jsonl"],
     ["p.jsonl:1", "field prompt", "expected a string or a non-empty list"]),
    ("prompt message bad role", {"p.jsonl": '{"prompt": [{"role": "wizard", "content": "x"}]}\n'},
     GEN + ["--prompts", "{d}/p.jsonl"], ["p.jsonl:1", "message 0", "system|user|assistant"]),
    ("prompts path is a folder", {}, GEN + ["--prompts", "{f}"], ["is a directory", "expected a prompt file"]),
    ("prompt over the context length", {"p.jsonl": json.dumps({"prompt": long_prompt}) + "\n"},
     GEN + ["--prompts", "{d}/p.jsonl", "--max-tokens", "8"], ["p.jsonl:1", "exceeds the context length", "512 tokens"]),
    ("max-tokens over the context length", {}, GEN + ["--prompts", "{f}/good.jsonl", "--max-tokens", "600"],
     ["max_tokens=600", "exceeds the context length"]),
    # ---- model specs and engine flags
    ("model spec that does not exist", {}, ["generate", "--out", "{out}", "--prompts", "{f}/good.jsonl", "--model", "no-such-model"],
     ["no-such-model", "not found", "expected embedded:NAME"]),
    ("model spec is a file", {}, ["generate", "--out", "{out}", "--prompts", "{f}/good.jsonl", "--model", "{f}/a_file.txt"],
     ["a_file.txt", "is a file", "expected a model folder"]),
    ("model folder without config.json", {}, ["generate", "--out", "{out}", "--prompts", "{f}/good.jsonl",
                                               "--model", "{f}/modeldir-noconfig"], ["modeldir-noconfig", "no config.json"]),
    ("unknown embedded model", {}, ["generate", "--out", "{out}", "--prompts", "{f}/good.jsonl", "--model", "embedded:gpt-17"],
     ["gpt-17", "unknown embedded model"]),
    ("openai server not reachable", {}, ["generate", "--out", "{out}", "--prompts", "{f}/good.jsonl", "--model", "openai:m",
                                         "--base-url", "http://127.0.0.1:{port}/v1", "--max-retries", "1"],
     ["127.0.0.1", "cannot connect"]),
    ("contradictory flags: --base-url with a local model", {}, GEN + ["--prompts", "{f}/good.jsonl",
                                                                      "--base-url", "http://127.0.0.1:9/v1"],
     ["--base-url is for the openai engine", "transformers"]),
    ("negative temperature", {}, GEN + ["--prompts", "{f}/good.jsonl", "--temperature", "-1"],
     ["field temperature", "greater than or equal to 0", "-1"]),
    ("negative --max-retries", {}, GEN + ["--prompts", "{f}/good.jsonl", "--max-retries", "-2"],
     ["field max_retries", "greater than or equal to 0"]),
    # ---- output folders
    ("out folder under a regular file", {}, ["generate", "--out", "{f}/a_file.txt/sub", "--model", "{tiny}",
                                            "--prompts", "{f}/good.jsonl"], ["a_file.txt/sub", "cannot create output folder"]),
    ("out is a regular file", {}, ["generate", "--out", "{f}/a_file.txt", "--model", "{tiny}",
                                  "--prompts", "{f}/good.jsonl"], ["a_file.txt", "cannot create output folder"]),
    # ---- constitutions (label / critique)
    ("constitution YAML syntax error", {"c.yaml": "name: x\nprinciples:\n  - id: a\n   bad: [\n"},
     LABEL + ["--constitution", "{d}/c.yaml"], ["c.yaml:", "invalid YAML"]),
    ("constitution unknown key", {"c.yaml": GOOD_CONSTITUTION + "colour: blue\n"}, LABEL + ["--constitution", "{d}/c.yaml"],
     ["c.yaml", "field colour", "unknown key"]),
    ("constitution principle unknown key", {"c.yaml": GOOD_CONSTITUTION.replace("    comparison_question:", "    severity: 3\n    comparison_question:")},
     LABEL + ["--constitution", "{d}/c.yaml"], ["c.yaml", "principles.0.severity", "unknown key"]),
    ("constitution wrong type", {"c.yaml": GOOD_CONSTITUTION + "    weight: heavy\n"}, LABEL + ["--constitution", "{d}/c.yaml"],
     ["c.yaml", "principles.0.weight", "valid number", "heavy"]),
    ("constitution empty file", {"c.yaml": ""}, LABEL + ["--constitution", "{d}/c.yaml"], ["c.yaml", "empty", "expected a YAML mapping"]),
    ("constitution no principles", {"c.yaml": GOOD_CONSTITUTION.split("principles:")[0] + "principles: []\n"},
     LABEL + ["--constitution", "{d}/c.yaml"], ["c.yaml", "field principles", "at least 1"]),
    ("constitution a list, not a mapping", {"c.yaml": "- one\n- two\n"}, LABEL + ["--constitution", "{d}/c.yaml"],
     ["c.yaml", "expected a YAML mapping"]),
    ("constitution duplicate principle ids", {"c.yaml": GOOD_CONSTITUTION + GOOD_CONSTITUTION.split("principles:\n")[1]},
     LABEL + ["--constitution", "{d}/c.yaml"], ["c.yaml", "duplicate principle id 'kind'"]),
    ("constitution not UTF-8", {"c.yaml": GOOD_CONSTITUTION.encode() + b"# \xff\xfe\n"}, LABEL + ["--constitution", "{d}/c.yaml"],
     ["c.yaml", "not UTF-8"]),
    ("constitution missing", {}, LABEL + ["--constitution", "{d}/nope.yaml"], ["nope.yaml", "no such file"]),
    ("critique with a broken constitution", {"c.yaml": GOOD_CONSTITUTION.replace("revision_request: Rewrite it kindly.", "revision_request: ''")},
     ["critique", "--out", "{out}", "--model", "{tiny}", "--constitution", "{d}/c.yaml", "--responses", "{f}/pairs.jsonl"],
     ["c.yaml", "principles.0.revision_request", "at least 1 character"]),
    # ---- pair files (label)
    ("pairs broken JSONL", {"p.jsonl": '{"prompt": "a", "response_a": "x", "response_b": "y"}\n{oops}\n'},
     ["label", "--out", "{out}", "--model", "{tiny}", "--pairs", "{d}/p.jsonl"], ["p.jsonl:2", "invalid JSON"]),
    ("pairs wrong shape", {"p.jsonl": '{"prompt": "a", "answer": "x"}\n'},
     ["label", "--out", "{out}", "--model", "{tiny}", "--pairs", "{d}/p.jsonl"], ["p.jsonl:1", "expected fields prompt + response_a/response_b"]),
    ("pairs reply wrong type", {"p.jsonl": '{"prompt": "a", "response_a": "x", "response_b": 7}\n'},
     ["label", "--out", "{out}", "--model", "{tiny}", "--pairs", "{d}/p.jsonl"], ["p.jsonl:1", "field response_b", "expected a string"]),
    ("pairs file empty", {"p.jsonl": ""}, ["label", "--out", "{out}", "--model", "{tiny}", "--pairs", "{d}/p.jsonl"],
     ["p.jsonl", "no records"]),
    ("contradictory labeler flags: --direct --cot", {}, LABEL + ["--direct", "--cot"], ["cot"]),
    ("contradictory labeler flags: --self-consistency without --cot", {}, LABEL + ["--self-consistency", "3"],
     ["self_consistency", "needs cot"]),
    ("clamp band that excludes 0.5", {}, LABEL + ["--cot", "--clamp", "0.6", "0.9"], ["clamp", "lo <= 0.5 <= hi"]),
    # ---- responses (critique)
    ("responses without response field", {"r.jsonl": '{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n'},
     CRIT + ["--responses", "{d}/r.jsonl"], ["r.jsonl:2", "field response", "expected a string"]),
    ("critique negative temperature", {}, CRIT + ["--responses", "{f}/good.jsonl", "--temperature", "-0.5"],
     ["temperature", "greater than or equal to 0"]),
    # ---- human labels (eval-labeler)
    ("human labels in the wrong format", {"h.jsonl": '{"prompt": "a", "response": "b", "label": 1}\n'},
     ["eval-labeler", "--out", "{out}", "--model", "{tiny}", "--human", "{d}/h.jsonl"], ["h.jsonl", "chosen"]),
    ("human labels not gzip despite .gz", {"h.jsonl.gz": b"this is not gzip\n"},
     ["eval-labeler", "--out", "{out}", "--model", "{tiny}", "--human", "{d}/h.jsonl.gz"], ["h.jsonl.gz"]),
    ("human labels missing", {}, ["eval-labeler", "--out", "{out}", "--model", "{tiny}", "--human", "{d}/none.jsonl"],
     ["none.jsonl", "not found"]),
    # ---- pipelines (run)
    ("pipeline YAML syntax error", {"pl.yaml": "name: x\nstages: {responses: {n: 2}\n"}, RUN + ["{d}/pl.yaml"],
     ["pl.yaml:", "invalid YAML"]),
    ("pipeline unknown stage", {"pl.yaml": "name: x\nstages:\n  polish: {}\n"}, RUN + ["{d}/pl.yaml"],
     ["pl.yaml", "stages.polish", "unknown key"]),
    ("pipeline wrong type", {"pl.yaml": "name: x\nprompts:\n  limit: many\n"}, RUN + ["{d}/pl.yaml"],
     ["pl.yaml", "prompts.limit", "valid integer", "many"]),
    ("pipeline --set without =", {"pl.yaml": "name: x\n"}, RUN + ["{d}/pl.yaml", "--set", "prompts.limit"],
     ["--set", "expected key.path=value"]),
    ("pipeline --set of a bad value", {"pl.yaml": "name: x\n"}, RUN + ["{d}/pl.yaml", "--set", "engine.batch_size=0"],
     ["pl.yaml", "engine.batch_size", "greater than or equal to 1"]),
    ("pipeline missing", {}, RUN + ["{d}/nope.yaml"], ["nope.yaml", "not found"]),
]


def test_the_table_is_big_enough():
    assert len(CASES) >= 25
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name,files_,argv,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exit_2_one_line_outputs_untouched(name, files_, argv, expected, files, previous_run,
                                                     tiny_model_dir, tmp_path, capsys):
    d = tmp_path / "case"
    d.mkdir()
    for fname, content in files_.items():
        _write(d / fname, content)
    before = tree_hash(previous_run)
    shared_before = tree_hash(files)
    values = {"d": d, "f": files, "tiny": tiny_model_dir, "out": previous_run, "port": free_port()}
    args = [a.format(**values) for a in argv]
    line = one_error_line(in_process(capsys, *args))
    for text in expected:
        assert text in line, f"{name}: {text!r} not in {line!r}"
    assert tree_hash(previous_run) == before, f"{name}: the existing outputs changed"
    assert tree_hash(files) == shared_before


ARGPARSE_CASES = [
    ("--n 0", ["generate", "--prompts", "p.jsonl", "--out", "o", "--n", "0"], "argument --n: expected a positive number"),
    ("--batch-size 0", ["generate", "--prompts", "p.jsonl", "--out", "o", "--batch-size", "0"], "argument --batch-size"),
    ("--concurrency 0", ["label", "--pairs", "p.jsonl", "--out", "o", "--concurrency", "0"], "argument --concurrency"),
    ("--rounds 0", ["critique", "--responses", "r", "--constitution", "c", "--out", "o", "--rounds", "0"], "argument --rounds"),
    ("missing --out", ["generate", "--prompts", "p.jsonl"], "the following arguments are required: --out"),
    ("--temperature abc", ["generate", "--prompts", "p", "--out", "o", "--temperature", "abc"], "invalid float value"),
]


@pytest.mark.parametrize("name,argv,expected", ARGPARSE_CASES, ids=[c[0] for c in ARGPARSE_CASES])
def test_bad_flags_exit_2_before_anything_runs(name, argv, expected, capsys):
    """Flag syntax is argparse's: usage, then one `error:` line naming the flag; exit 2."""
    from rlaif.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("rlaif ") and "error: " in last and expected in last, err


def test_corrupt_line_inside_an_existing_output_is_refused_not_repaired(files, tiny_model_dir, tmp_path, capsys):
    """Damage in the middle of an output is not ours to repair: exit 2, the file left as it is."""
    out = tmp_path / "out"
    assert in_process(capsys, "generate", "--prompts", files / "good.jsonl", "--out", out, "--model", tiny_model_dir,
                      "--max-tokens", 4).returncode == 0
    path = out / "responses.jsonl"
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(lines[0][:10] + b"\n" + b"\n".join(lines[1:]))
    before = tree_hash(out)
    line = one_error_line(in_process(capsys, "generate", "--prompts", files / "good.jsonl", "--out", out,
                                     "--model", tiny_model_dir, "--max-tokens", 4))
    assert "responses.jsonl:1: corrupt line" in line and "--overwrite" in line
    assert tree_hash(out) == before


def test_gzip_human_labels_with_a_broken_line_names_the_line(tmp_path, tiny_model_dir, capsys):
    path = tmp_path / "h.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go"}) + "\n")
        f.write("{not json\n")
    line = one_error_line(in_process(capsys, "eval-labeler", "--human", path, "--out", tmp_path / "o",
                                     "--model", tiny_model_dir))
    assert "h.jsonl.gz:2" in line


def test_unwritable_output_folder_in_a_subprocess(files, tiny_model_dir, tmp_path):
    """The same refusal from a real process (exit code and stderr as a shell sees them)."""
    from reliability_helpers import run

    target = tmp_path / "ro"
    shutil.copy(files / "a_file.txt", target)
    line = one_error_line(run("generate", "--prompts", files / "good.jsonl", "--out", target / "sub",
                              "--model", tiny_model_dir, timeout=180))
    assert "ro/sub" in line and "cannot create output folder" in line
