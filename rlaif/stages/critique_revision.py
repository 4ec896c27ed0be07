"""Critique -> revision (SL-CAI): make a response better satisfy a constitution, K rounds at a time.

For each response record, round k = 1..K:
    principle_k  ~ constitution (weighted, seeded by (run seed, response id), no repeat in a chain)
    critique_k   = engine(critique template  | prompt, text_{k-1}, principle_k)
    revision_k   = engine(revision template  | prompt, text_{k-1}, principle_k, critique_k)
    text_k       = revision_k if it is usable, else text_{k-1}
with text_0 the original response. A revision is *degenerate* (flagged, never silently kept) when it
is empty, identical to the original or to the text it was asked to revise, or merely repeats the
request, the critique or the user's prompt. The final revision is the last usable one; a chain with
none is degenerate and left out of the derived datasets (and counted in the summary).

Outputs in the stage folder:
    chains.jsonl          the resumable primary output: one chain per response (runner-managed)
    sl_cai.jsonl          SFT data, TRL conversational prompt-completion:
                          {"id", "prompt": [messages], "completion": [{"role": "assistant", ...}]}
    revision_pairs.jsonl  TRL conversational preference: {"id", "prompt", "chosen": [final revision],
                          "rejected": [original], "principles", "degenerate", ...}
The last two are derived from all chains at the end of a run and written atomically.

`process(batch)` is pure over records and an engine: per round, one `generate` call holds the
critique requests of the whole batch, the next one the revision requests. Reading the responses:
stages/response_inputs.py; cleaning outputs and the degenerate checks: stages/revision_checks.py.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterable, Iterator

from pydantic import Field

from rlaif.backends.base import Engine, GenerationRequest
from rlaif.config import Strict, config_hash
from rlaif.constitution import Constitution, Principle, load_constitution
from rlaif.records import Reread, record_id, request_seed, write_jsonl_atomic
from rlaif.manifest import read_manifest, update_manifest
from rlaif.backends.base import independent_requests
from rlaif.runner import OutputLock, run_stage
from rlaif.stages.response_inputs import ResponsesFile, normalize_responses
from rlaif.stages.revision_checks import STOPS, clean_output, critique_flags, revision_flags, template_lines
from rlaif.templates import Template, load_template

STAGE = "critique"
CHAINS = "chains.jsonl"
SL_CAI = "sl_cai.jsonl"
PAIRS = "revision_pairs.jsonl"


class CritiqueConfig(Strict):
    """Settings of the critique-revision stage (one YAML block in a pipeline)."""

    rounds: int = Field(2, ge=1)
    seed: int = 0
    repeat_principles: bool = False  # allow the same principle twice in one chain
    few_shot: int = Field(1, ge=0)  # exemplars rendered into each prompt
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    critique_max_tokens: int = Field(96, ge=1)
    revision_max_tokens: int = Field(160, ge=1)
    critique_template: str = "critique"
    revision_template: str = "revision"
    similarity: float = Field(0.8, gt=0, le=1)  # at or above this, a revision "repeats" a text


# ------------------------------------------------------------------ principles and ids


def draw_principles(constitution: Constitution, seed: int, response_id: str, rounds: int,
                    repeat: bool = False) -> list[Principle]:
    """The principles of one chain: reproducible from (run seed, response id) alone."""
    rng = random.Random(int(record_id("principles", seed, response_id), 16))
    return constitution.sample_principles(rng, rounds, repeat=repeat)


# ------------------------------------------------------------------ rendering


def conversation_text(messages: list[dict], response: str) -> str:
    """The prompt (system turns left out) and the reply under review, as a plain transcript."""
    turns = [f"{m['role'].capitalize()}: {m['content'].strip()}" for m in messages if m["role"] != "system"]
    return "\n\n".join(turns + [f"Assistant: {response.strip()}"])


def format_examples(constitution: Constitution, principle: Principle, k: int, kind: str) -> str:
    """Worked exemplars as text: conversation, request, critique (and, for revisions, the revision).
    An exemplar tied to another principle is shown with that principle's own requests."""
    blocks = []
    for i, ex in enumerate(constitution.exemplars_for(principle, k), 1):
        p = constitution.principle(ex.principle) if ex.principle else principle
        text = (f"Example {i}:\n\n{conversation_text([{'role': 'user', 'content': ex.prompt}], ex.response)}"
                f"\n\nCritique request: {p.critique_request.strip()}\nCritique: {ex.critique.strip()}")
        if kind == "revision":
            text += f"\n\nRevision request: {p.revision_request.strip()}\nRevision: {ex.revision.strip()}"
        blocks.append(text)
    return "".join(b + "\n\n---\n\n" for b in blocks)


def render_values(constitution: Constitution, principle: Principle, messages: list[dict], text: str,
                  few_shot: int, kind: str, critique: str = "") -> dict:
    user = [m["content"] for m in messages if m["role"] == "user"]
    return {
        "examples": format_examples(constitution, principle, few_shot, kind),
        "conversation": conversation_text(messages, text),
        "prompt": user[-1].strip(),
        "response": text.strip(),
        "principle_id": principle.id,
        "critique_request": principle.critique_request.strip(),
        "revision_request": principle.revision_request.strip(),
        "critique": critique.strip(),
    }


def render_critique(template: Template, constitution: Constitution, principle: Principle,
                    messages: list[dict], text: str, few_shot: int = 1) -> list[dict]:
    return template.render(**render_values(constitution, principle, messages, text, few_shot, "critique"))


def render_revision(template: Template, constitution: Constitution, principle: Principle,
                    messages: list[dict], text: str, critique: str, few_shot: int = 1) -> list[dict]:
    return template.render(**render_values(constitution, principle, messages, text, few_shot, "revision",
                                           critique))


# ------------------------------------------------------------------ the stage


def chain_inputs(responses: Iterable[dict], constitution: Constitution, cfg: CritiqueConfig,
                 template_ids: dict, critic: str = "") -> list[dict]:
    """One runner input per response: chain id (from the response id, the constitution, the stage
    config and the critic model `critic`, so another critic in the same folder writes its own
    chains) and the principles drawn for it."""
    return list(iter_chain_inputs(responses, constitution, cfg, template_ids, critic))


def iter_chain_inputs(responses: Iterable[dict], constitution: Constitution, cfg: CritiqueConfig,
                      template_ids: dict, critic: str = "") -> Iterator[dict]:
    """`chain_inputs` a response at a time."""
    chash = config_hash(constitution)
    stage_cfg = cfg.model_dump(mode="json")
    for rec in responses:
        principles = draw_principles(constitution, cfg.seed, rec["response_id"], cfg.rounds,
                                     cfg.repeat_principles)
        cid = record_id(STAGE, rec["response_id"], rec["prompt"], rec["response"], chash, stage_cfg, template_ids,
                        *([critic] if critic else []))
        yield {**rec, "id": cid, "principles": [p.id for p in principles]}


def make_process(constitution: Constitution, engine: Engine, cfg: CritiqueConfig,
                 critique_template: Template, revision_template: Template):
    """`process(batch) -> chains`: pure over the batch and the engine, two generate calls a round."""
    meta = {"constitution": {"name": constitution.name, "version": constitution.version,
                             "hash": config_hash(constitution)},
            "templates": {"critique": critique_template.id, "revision": revision_template.id},
            "seed": cfg.seed, "critic_model": engine.model}

    echo = template_lines(revision_template) + template_lines(critique_template)

    def process(batch: list[dict]) -> list[dict]:
        current = [rec["response"] for rec in batch]  # text each chain is revising
        rounds: list[list[dict]] = [[] for _ in batch]
        for k in range(cfg.rounds):
            principles = [constitution.principle(rec["principles"][k]) for rec in batch]
            crit_req = [GenerationRequest(
                render_critique(critique_template, constitution, p, rec["prompt"], text, cfg.few_shot),
                temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.critique_max_tokens,
                stop=STOPS["critique"], seed=request_seed(cfg.seed, rec["id"], k, "critique"))
                for rec, p, text in zip(batch, principles, current)]
            critiques_raw = [c.texts[0] for c in engine.generate(crit_req)]
            critiques = [clean_output(t, "critique") for t in critiques_raw]
            rev_req = [GenerationRequest(
                render_revision(revision_template, constitution, p, rec["prompt"], text, crit, cfg.few_shot),
                temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.revision_max_tokens,
                stop=STOPS["revision"], seed=request_seed(cfg.seed, rec["id"], k, "revision"))
                for rec, p, text, crit in zip(batch, principles, current, critiques)]
            revisions_raw = [c.texts[0] for c in engine.generate(rev_req)]
            for i, rec in enumerate(batch):
                revision = clean_output(revisions_raw[i], "revision")
                user = [m["content"] for m in rec["prompt"] if m["role"] == "user"][-1]
                flags = revision_flags(revision, before=current[i], original=rec["response"],
                                       critique=critiques[i], principle=principles[i], prompt=user,
                                       threshold=cfg.similarity, template_text=echo)
                entry = {"round": k + 1, "principle": principles[i].id, "critique": critiques[i],
                         "revision": revision, "degenerate": flags,
                         "critique_degenerate": critique_flags(critiques[i], principles[i], cfg.similarity)}
                if critiques_raw[i].strip() != critiques[i]:
                    entry["critique_raw"] = critiques_raw[i]
                if revisions_raw[i].strip() != revision:
                    entry["revision_raw"] = revisions_raw[i]
                rounds[i].append(entry)
                if not flags:
                    current[i] = revision
        chains = []
        for rec, rs in zip(batch, rounds):
            usable = [r for r in rs if not r["degenerate"]]
            final = usable[-1] if usable else None
            chains.append({
                "id": rec["id"], "response_id": rec["response_id"], "prompt": rec["prompt"],
                "original": rec["response"], "model": rec.get("model"), **meta, "rounds": rs,
                "final": final["revision"] if final else None,
                "final_round": final["round"] if final else None,
                "degenerate": [] if final else sorted({f for r in rs for f in r["degenerate"]}),
            })
        return chains

    return process


def derive_datasets(chains: Iterable[dict]) -> tuple[list[dict], list[dict]]:
    """SFT records and revision pairs from the non-degenerate chains."""
    kept = [ch for ch in chains if ch.get("final") is not None]
    return [sl_cai_record(ch) for ch in kept], [revision_pair(ch) for ch in kept]


def _used_principles(ch: dict) -> list[str]:
    return [r["principle"] for r in ch["rounds"] if r["round"] <= ch["final_round"] and not r["degenerate"]]


def sl_cai_record(ch: dict) -> dict:
    """The SL-CAI SFT record of a chain with a usable final revision."""
    return {"id": ch["id"], "prompt": list(ch["prompt"]),
            "completion": [{"role": "assistant", "content": ch["final"]}],
            "principles": _used_principles(ch), "constitution": ch["constitution"]["name"]}


def revision_pair(ch: dict) -> dict:
    """The (final revision ≻ original) preference pair of a chain with a usable final revision."""
    return {"id": ch["id"], "prompt": list(ch["prompt"]),
            "chosen": [{"role": "assistant", "content": ch["final"]}],
            "rejected": [{"role": "assistant", "content": ch["original"]}],
            "principles": _used_principles(ch),
            "degenerate": [r["degenerate"] for r in ch["rounds"]],
            "constitution": ch["constitution"], "response_id": ch["response_id"],
            "source": "critique_revision"}


def summarize(chains: Iterable[dict], rounds: int) -> dict:
    """Counts and mean lengths over the chains, in one pass (the chains may be read from disk)."""
    n = complete = good = revisions = degenerate = empty = 0
    flags: dict[str, int] = {}
    sums = dict.fromkeys(("words_original", "words_original_kept", "words_final", "chars_original_kept",
                          "chars_final"), 0)
    for ch in chains:
        n += 1
        complete += len(ch["rounds"]) == rounds
        for r in ch["rounds"]:
            revisions += 1
            degenerate += bool(r["degenerate"])
            empty += "empty" in r.get("critique_degenerate", [])
            for f in r["degenerate"]:
                flags[f] = flags.get(f, 0) + 1
        sums["words_original"] += len(ch["original"].split())
        if ch.get("final") is not None:
            good += 1
            sums["words_original_kept"] += len(ch["original"].split())
            sums["words_final"] += len(ch["final"].split())
            sums["chars_original_kept"] += len(ch["original"])
            sums["chars_final"] += len(ch["final"])

    def mean(total, count):
        return round(total / count, 1) if count else None

    return {
        "chains": n,
        "complete_chains": complete,
        "degenerate_chains": n - good,
        "degenerate_chain_share": round((n - good) / n, 3) if n else None,
        "revisions": revisions,
        "degenerate_revisions": degenerate,
        "degenerate_revision_share": round(degenerate / revisions, 3) if revisions else None,
        "degenerate_reasons": dict(sorted(flags.items())),
        "empty_critiques": empty,
        "mean_words_original": mean(sums["words_original"], n),
        "mean_words_original_kept": mean(sums["words_original_kept"], good),
        "mean_words_final": mean(sums["words_final"], good),
        "mean_chars_original_kept": mean(sums["chars_original_kept"], good),
        "mean_chars_final": mean(sums["chars_final"], good),
    }


def run_critique(responses, constitution, engine: Engine, out_dir, *, rounds: int = 2, seed: int = 0,
                 batch_size: int = 8, overwrite: bool = False, config: CritiqueConfig | None = None,
                 progress: bool = True) -> dict:
    """Run the stage into `out_dir` (resuming) and write the derived datasets; returns a summary.

    `responses`: a JSONL path or a `ResponsesFile` (streamed on every pass, never held) or a list of
    response records; `constitution`: a Constitution, a shipped name or a path. `config` overrides
    `rounds`/`seed` when given."""
    if isinstance(responses, (str, Path, ResponsesFile)):
        responses = responses if isinstance(responses, ResponsesFile) else ResponsesFile(responses)
        responses.check()
    else:
        responses = normalize_responses(responses)
    if not isinstance(constitution, Constitution):
        constitution = load_constitution(constitution)
    cfg = config or CritiqueConfig(rounds=rounds, seed=seed)
    ct, rt = load_template(cfg.critique_template), load_template(cfg.revision_template)
    template_ids = {"critique": ct.id, "revision": rt.id}
    critic = f"{engine.name}:{engine.model}"
    if isinstance(responses, Reread):
        inputs = Reread(lambda: iter_chain_inputs(responses, constitution, cfg, template_ids, critic))
    else:
        inputs = chain_inputs(responses, constitution, cfg, template_ids, critic)
    out_dir = Path(out_dir)
    with OutputLock(out_dir):
        result = run_stage(
            STAGE, inputs, make_process(constitution, engine, cfg, ct, rt), out_dir,
            config={"critique": cfg.model_dump(mode="json"), "templates": template_ids,
                    "constitution": {"name": constitution.name, "version": constitution.version,
                                     "hash": config_hash(constitution)},
                    "critic_model": engine.model},
            batch_size=batch_size, output=CHAINS, overwrite=overwrite, progress=progress,
            stats=getattr(engine, "stats", None), fixed_batches=not independent_requests(engine))
        kept = lambda: (ch for ch in result.records if ch.get("final") is not None)  # noqa: E731
        write_jsonl_atomic(out_dir / SL_CAI, (sl_cai_record(ch) for ch in kept()))
        write_jsonl_atomic(out_dir / PAIRS, (revision_pair(ch) for ch in kept()))
        stats = summarize(result.records, cfg.rounds)
        summary = {"out_dir": str(out_dir), "constitution": f"{constitution.name} v{constitution.version}",
                   "inputs": result.total, "done_before": result.done_before, "written": result.written,
                   "failed": result.failed, **stats, "sl_cai": stats["chains"] - stats["degenerate_chains"],
                   "revision_pairs": stats["chains"] - stats["degenerate_chains"],
                   "seconds": round(result.seconds, 1)}
        entry = read_manifest(out_dir).get("stages", {}).get(STAGE, {})
        update_manifest(out_dir, STAGE, {**entry, "summary": summary,
                                         "derived": {"sl_cai": SL_CAI, "revision_pairs": PAIRS}})
    return summary


def format_summary(s: dict) -> str:
    share = s["degenerate_revision_share"]
    lines = [
        f"critique-revision ({s['constitution']}) -> {s['out_dir']}",
        f"  chains: {s['chains']} ({s['written']} new, {s['done_before']} already done, {s['failed']} failed), "
        f"{s['complete_chains']} complete",
        f"  degenerate revisions: {s['degenerate_revisions']}/{s['revisions']}"
        + (f" ({share:.0%})" if share is not None else "")
        + (f"  {s['degenerate_reasons']}" if s["degenerate_reasons"] else ""),
        f"  degenerate chains (no usable revision, left out): {s['degenerate_chains']}",
        f"  mean words: original {s['mean_words_original_kept']} -> final {s['mean_words_final']} (kept chains)",
        f"  wrote {SL_CAI} ({s['sl_cai']}), {PAIRS} ({s['revision_pairs']}), {CHAINS}",
    ]
    return "\n".join(lines)
