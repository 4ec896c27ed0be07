"""`rlaif judge-audit` and the pipeline's `judge_audit` stage: the judge audit (rlaif/judge/audit.py
says what each probe measures) over a judge, a constitution and a pair set, written as
`OUT/audit.json` and `OUT/audit.md` (atomic), with its gates. A tripped gate is one line and exit
code 1: a run or a CI job stops on a judge that can be gamed."""

from __future__ import annotations

import json
from pathlib import Path

from rlaif.errors import GateFailed, UserError
from rlaif.judge import AuditGates, Judge, audit_lines, gate_failures
from rlaif.prompts_io import as_messages
from rlaif.records import iter_jsonl_numbered, write_atomic
from rlaif.stages.pair_inputs import load_pairs

RESULT = "audit.json"
REPORT = "audit.md"
ON_CPU = ("The embedded 135M judge on CPU shows the audit's mechanics, not a judge worth trusting: its effects "
          "are what a model that small does, and a stronger judge is what the gates are for.")


def read_self_pairs(path: str | Path) -> list[dict]:
    """JSONL of {prompt, own, other, p_reference}: the judge's own reply against another's, and an
    independent p(own ≻ other) from another judge or from people."""
    out = []
    for line, rec in iter_jsonl_numbered(path):
        where = f"{path}:{line}"
        for field in ("own", "other"):
            if not isinstance(rec.get(field), str) or not rec[field].strip():
                raise UserError(f"{where}: field {field}: expected the reply's text")
        p = rec.get("p_reference")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise UserError(f"{where}: field p_reference: expected a probability in [0, 1], got {p!r}")
        out.append({"prompt": as_messages(rec.get("prompt"), where), "own": rec["own"], "other": rec["other"],
                    "p_reference": float(p)})
    if not out:
        raise UserError(f"{path}: no self-preference pairs")
    return out


def run_judge_audit(judge: Judge, out_dir, *, pairs_file: str | None = None, self_pairs_file: str | None = None,
                    gates: AuditGates | None = None, seed: int = 0) -> dict:
    """Audit `judge`, write audit.json and audit.md, and raise GateFailed when a gate trips."""
    gates = gates or AuditGates()
    pairs = None
    if pairs_file is not None:
        pairs = [{"prompt": p["prompt"], "a": p["a"], "b": p["b"]} for p in load_pairs(pairs_file)[0]]
    self_pairs = read_self_pairs(self_pairs_file) if self_pairs_file else None
    result = judge.audit(pairs, self_pairs=self_pairs, seed=seed)
    result["gates"] = gates.model_dump()
    failures = gate_failures(result, gates) if result.get("probes") else []
    result["failed_gates"] = failures
    result["lines"] = audit_lines(result) if result.get("probes") else [result.get("reason", "")]
    if judge.engine.model.startswith("embedded:"):
        result["note"] = ON_CPU
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / RESULT, json.dumps(result, indent=2) + "\n")
    write_atomic(out / REPORT, report_markdown(result))
    if failures:
        raise GateFailed("\n".join(failures))
    return result


def report_markdown(result: dict) -> str:
    lines = [f"# Judge audit: {result['judge']['model']}" if "judge" in result else "# Judge audit", ""]
    if result.get("note"):
        lines += [result["note"], ""]
    lines += [f"{result.get('pairs', 0)} pairs ({result.get('source', '')}), seed {result.get('seed', 0)}. Each "
              "effect is a mean over pairs with its 95 % bootstrap CI (pairs resampled by prompt); FLAGGED means "
              "the CI lies wholly on the biased side.", ""]
    lines += [f"- {line}" for line in result["lines"]]
    if result["failed_gates"]:
        lines += ["", "## Gates that tripped", ""] + [f"- {g}" for g in result["failed_gates"]]
    return "\n".join(lines) + "\n"


__all__ = ["run_judge_audit", "read_self_pairs", "RESULT", "REPORT"]
