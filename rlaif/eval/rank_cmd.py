"""`rlaif rank CHECKPOINT... --prompts P --judge SPEC --out DIR`: rank checkpoints by pairwise judgements.

1. Check every input before any work: at least two checkpoints, each a model folder that
   transformers can load as a causal LM, a model spec (`embedded:NAME`, `gguf:PATH`, `openai:NAME`,
   `vllm:ID`, a hub id), or a responses JSONL file (`prompt` + `response` per line, e.g. the output
   of `rlaif generate` or `rlaif best-of-n`) that answers every ranked prompt.
2. Each model answers the held-out prompts greedily (the evaluation stage's `policy_responses`),
   one model loaded at a time and closed after use; files are read as they are.
3. Round robin: on every prompt, every pair of checkpoints is judged by the labeler, position-
   debiased (both orders, averaged), giving y = p(i's reply ≻ j's reply).
4. Bradley–Terry ratings with bootstrap CIs (prompts redrawn), the win-rate matrix and the
   length-controlled win rates (rlaif/eval/ranking.py), written by rlaif/eval/ranking_report.py.

For the LC win rate's regulariser, a baseline (first checkpoint) that is a model also answers every
prompt told to be verbose and told to be concise (prompts/lc_verbose.yaml, prompts/lc_concise.yaml:
the instructions AlpacaEval 2 gave its GPT-4 Turbo baseline, added to the system turn), with the
same greedy decoding and token budget, and the judge compares each such reply with the baseline's
own (`lc_gamed=False` leaves this out; a responses-file baseline has no gamed replies).

Outputs in DIR: responses/*.jsonl (the gamed replies in responses-*-lc-verbose.jsonl and -lc-concise.jsonl), judgments.jsonl (the labeler's records), ranking.json,
ranking.md, ranking.html, ratings.png, win_rate.png. Steps 2 and 3 resume like every stage.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from rlaif.config import EngineConfig, parse_model_spec
from rlaif.errors import UserError
from rlaif.records import read_jsonl, record_id

JUDGMENTS = "judgments.jsonl"
GAMED_TEMPLATES = {"verbose": "lc_verbose.yaml", "concise": "lc_concise.yaml"}
_MODEL_WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")


@dataclass
class Checkpoint:
    name: str  # as given on the command line
    kind: str  # "model" or "responses"
    engine: EngineConfig | None = None
    replies: dict | None = None  # prompt id -> reply text (responses files)


def check_model_folder(path: Path, field: str) -> None:
    """A folder must hold a causal LM that transformers can configure, with weights."""
    if not (path / "config.json").is_file():
        raise UserError(f"{field} {path}: folder is not a model (no config.json); expected a model folder "
                        "(e.g. a dpo/ppo/sft output), a model spec or a responses JSONL file")
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(path)
    except Exception as e:  # broken JSON, unknown model_type, ...
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise UserError(f"{field} {path}: config.json cannot be loaded as a model config ({reason})") from None
    arch = list(getattr(cfg, "architectures", None) or [])
    if arch and not any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in arch):
        raise UserError(f"{field} {path}: a {', '.join(arch)} is not a text generator; expected a causal LM folder")
    if not any(next(path.glob(g), None) for g in _MODEL_WEIGHTS):
        raise UserError(f"{field} {path}: folder has config.json but no weights (*.safetensors or *.bin)")


def read_reply_file(path: Path, field: str, prompts: list[dict], source: str) -> dict:
    """prompt id -> reply, the first record per prompt (sample 0 where the file has several)."""
    replies: dict[str, str] = {}
    from rlaif.prompts_io import as_messages

    for n, rec in enumerate(read_jsonl(path), 1):
        where = f"{path}:{n}"
        if "prompt" not in rec or not isinstance(rec.get("response"), str):
            raise UserError(f"{where}: expected fields prompt and response (text), as written by rlaif generate "
                            "or rlaif best-of-n")
        key = record_id("prompt", as_messages(rec["prompt"], where))
        replies.setdefault(key, rec["response"])
    for p in prompts:
        if p["id"] not in replies:
            line = f"{source}:{p['line']}" if p.get("line") else f"{source}: prompt {p['id']}"
            raise UserError(f"{field} {path}: no response to the prompt at {line}; a responses file must answer "
                            "every ranked prompt (use the same --prompts and --n-prompts it was generated with)")
    return replies


def resolve_checkpoints(specs: list[str], prompts: list[dict], base: EngineConfig, source: str) -> list[Checkpoint]:
    if len(specs) < 2:
        raise UserError(f"checkpoints: got {len(specs)}; expected at least 2 to rank")
    seen = set()
    out = []
    for k, spec in enumerate(specs, 1):
        field = f"checkpoint {k}"
        if spec in seen:
            raise UserError(f"{field} {spec}: given twice; expected distinct checkpoints")
        seen.add(spec)
        path = Path(spec).expanduser()
        if path.is_dir():
            check_model_folder(path, field)
            out.append(Checkpoint(spec, "model", engine=parse_model_spec(str(path), base)))
        elif path.is_file() and path.suffix in (".jsonl", ".json", ".gz"):
            out.append(Checkpoint(spec, "responses", replies=read_reply_file(path, field, prompts, source)))
        elif path.is_file() and path.suffix == ".gguf":
            out.append(Checkpoint(spec, "model", engine=parse_model_spec(f"gguf:{path}", base)))
        elif path.is_file():
            raise UserError(f"{field} {spec}: is a file but not a responses JSONL; expected a model folder, "
                            "a model spec or a .jsonl of prompt/response records")
        else:
            cfg = parse_model_spec(spec, base)
            check_spec(cfg, spec, field)
            out.append(Checkpoint(spec, "model", engine=cfg))
    return out


def check_spec(cfg: EngineConfig, spec: str, field: str) -> None:
    """What can be known about a model spec without loading it: a known embedded name, a model
    folder, a hub-id shape, an existing GGUF file."""
    from rlaif.backends.embedded import EMBEDDED, is_hub_id

    model = cfg.model
    if cfg.kind == "transformers" and model.startswith("embedded:"):
        if model.split(":", 1)[1] not in EMBEDDED:
            raise UserError(f"{field} {spec}: unknown embedded model; expected one of "
                            + ", ".join(f"embedded:{name}" for name in EMBEDDED))
    elif cfg.kind == "transformers" and Path(model).expanduser().is_dir():
        check_model_folder(Path(model).expanduser(), field)
    elif cfg.kind == "transformers" and not is_hub_id(model):
        raise UserError(f"{field} {spec}: not found; expected a model folder, a responses JSONL file, "
                        "embedded:NAME, gguf:PATH, openai:NAME, vllm:ID or a hub id org/name")
    if cfg.kind == "gguf" and not Path(model).expanduser().is_file():
        raise UserError(f"{field} {spec}: GGUF file {model} not found")


def gamed_prompts(prompts: list[dict], variant: str, system_prompt: str | None) -> list[dict]:
    """The prompts with the variant's instruction appended to the system turn (the prompt's own, else
    the engine's `system_prompt`, else a new one), each with the id of the prompt it came from."""
    from rlaif.templates import load_template

    instruction = load_template(GAMED_TEMPLATES[variant]).messages[0].content
    out = []
    for p in prompts:
        messages = [dict(m) for m in p["prompt"]]
        if messages and messages[0]["role"] == "system":
            messages[0]["content"] = f"{messages[0]['content']}\n\n{instruction}"
        else:
            messages.insert(0, {"role": "system",
                                "content": f"{system_prompt}\n\n{instruction}" if system_prompt else instruction})
        out.append({**p, "id": record_id("rank-lc", variant, p["id"]), "prompt": messages, "origin": p["id"]})
    return out


def generate_replies(ckpt: Checkpoint, prompts: list[dict], out: Path, max_tokens: int, source: str,
                     gamed: bool = False) -> tuple[dict, dict]:
    """prompt id -> greedy reply from a model checkpoint (loaded here, closed after use); with
    `gamed`, also {variant: prompt id -> reply} for the verbose and concise instructions."""
    from rlaif.backends import load_engine
    from rlaif.eval.policy_eval import policy_responses
    from rlaif.stages.responses import check_context

    engine = load_engine(ckpt.engine)
    gamed_replies = {}
    try:
        check_context(engine, prompts, max_tokens, source)
        stage = f"responses-{record_id('rank-checkpoint', ckpt.name)[:10]}"
        records = policy_responses(engine, prompts, max_tokens, out / "responses", stage, ckpt.engine.batch_size)
        for variant in GAMED_TEMPLATES if gamed else ():
            asked = gamed_prompts(prompts, variant, ckpt.engine.system_prompt)
            origin = {q["id"]: q["origin"] for q in asked}
            check_context(engine, asked, max_tokens, source)
            done = policy_responses(engine, asked, max_tokens, out / "responses", f"{stage}-lc-{variant}",
                                    ckpt.engine.batch_size)
            gamed_replies[variant] = {origin[r["prompt_id"]]: r["response"] for r in done}
    finally:
        engine.close()
    return {r["prompt_id"]: r["response"] for r in records}, gamed_replies


def gamed_pairs(baseline: str, base_replies: dict, gamed_replies: dict, prompts: list[dict]) -> list[dict]:
    """One pair per (prompt, variant): a = the baseline's reply, b = its gamed reply."""
    pairs = []
    for q, p in enumerate(prompts):
        for variant, replies in gamed_replies.items():
            if p["id"] in base_replies and p["id"] in replies:
                a, b = base_replies[p["id"]], replies[p["id"]]
                pid = record_id("rank-lc", p["id"], baseline, variant, a, b)
                pairs.append({"id": pid, "prompt": p["prompt"], "a": a, "b": b, "given": "unordered",
                              "source_line": q + 1, "source_id": pid, "i": 0, "j": -1, "prompt_index": q,
                              "variant": variant})
    return pairs


def round_robin_pairs(names: list[str], replies: list[dict], prompts: list[dict]) -> list[dict]:
    """One pair record per (prompt, i < j) where both answered; a = i's reply, b = j's reply."""
    pairs = []
    for q, p in enumerate(prompts):
        for i, j in combinations(range(len(names)), 2):
            if p["id"] in replies[i] and p["id"] in replies[j]:
                a, b = replies[i][p["id"]], replies[j][p["id"]]
                pid = record_id("rank", p["id"], names[i], names[j], a, b)
                pairs.append({"id": pid, "prompt": p["prompt"], "a": a, "b": b, "given": "unordered",
                              "source_line": q + 1, "source_id": pid, "i": i, "j": j, "prompt_index": q})
    return pairs


def judge_pairs(pairs: list[dict], judge, out: Path, *, batch_size: int, overwrite: bool = False):
    """The judge's soft label for every pair, joined back by content: pairs with the same prompt and
    the same two replies in the same order share one judgement."""
    from rlaif.stages.labeler import label_pairs

    result = label_pairs(pairs, judge, out, batch_size=batch_size, output=JUDGMENTS, overwrite=overwrite)
    key_of = {pr["source_id"]: record_id(pr["prompt"], pr["a"], pr["b"]) for pr in pairs}
    p_by_key = {key_of[r["source_id"]]: r for r in result.records if r["source_id"] in key_of}
    games = []
    for pr in pairs:
        rec = p_by_key.get(key_of[pr["source_id"]])
        if rec is not None:
            games.append({**{k: pr[k] for k in ("i", "j", "prompt_index", "variant") if k in pr}, "p": rec["p_a"],
                          "labels_by_order": rec["labels_by_order"],
                          "len_a": len(pr["a"].split()), "len_b": len(pr["b"].split())})
    return games, result


def run_check(judge, out: Path, batch_size: int, overwrite: bool) -> dict:
    """The judge check (rlaif/eval/judge_check.py) before the judgements; its line is printed."""
    from rlaif.eval.judge_check import run_judge_check
    from rlaif.judge import judge_check_line, judge_verdict

    check = run_judge_check(judge, out / "judge_check", batch_size=batch_size, overwrite=overwrite)
    line = judge_check_line(check)
    print(f"warning: {line}" if judge_verdict(check) != "ok" else line, flush=True)
    return check


def rank(checkpoints: list[Checkpoint], prompts: list[dict], judge, out: Path, *,
         max_tokens: int = 128, seed: int = 0, n_boot: int = 1000, batch_size: int = 8, source: str = "prompts",
         judge_loader=None, overwrite: bool = False, outcomes: str = "soft", judge_check: bool = True,
         lc_gamed: bool = True) -> dict:
    """Replies from every checkpoint, round-robin judgements, ratings and reports in `out`.
    `judge` is a Judge (its constitution and settings are the ranking's), or None with
    `judge_loader()` to build it once the replies are made.
    `judge_check`: first put the judge on the constitution's check pairs (out/judge_check/), print
    its line and carry the verdict into the report (off where a pipeline has checked it already).
    `lc_gamed`: make and judge the baseline's verbose and concise replies for the LC fit (module doc)."""
    from rlaif.eval.ranking_report import summarise, write_reports
    from rlaif.runner import OutputLock

    out = Path(out)
    names = [c.name for c in checkpoints]
    with OutputLock(out):
        replies, gamed = [], {}
        for k, c in enumerate(checkpoints):
            if c.kind == "responses":
                replies.append(c.replies)
                continue
            mine, variants = generate_replies(c, prompts, out, max_tokens, source, gamed=lc_gamed and k == 0)
            replies.append(mine)
            gamed = gamed or variants
        pairs = round_robin_pairs(names, replies, prompts)
        extra = gamed_pairs(names[0], replies[0], gamed, prompts)
        if not pairs:
            raise UserError(f"{source}: no prompt was answered by every pair of checkpoints; nothing to judge")
        owned = judge is None
        judge = judge_loader() if owned else judge
        try:
            check = run_check(judge, out, batch_size, overwrite) if judge_check else None
            judged, result = judge_pairs(pairs + extra, judge, out, batch_size=batch_size, overwrite=overwrite)
            games = [g for g in judged if "variant" not in g]
            gamed_games = [g for g in judged if "variant" in g]
            judge_name, judge_settings, constitution = judge.name, judge.describe(), judge.constitution
        finally:
            if owned:
                judge.close()
        if not games:
            raise UserError(f"{out / 'failures.jsonl'}: every judgement failed; nothing to rank")
        info = summarise(names, [c.kind for c in checkpoints], replies, prompts, games, gamed_games=gamed_games,
                         n_boot=n_boot, seed=seed, outcomes=outcomes)
        info["setup"] = {"judge": judge_name, "constitution": constitution.name, "prompts": source,
                         "n_prompts": len(prompts), "pairs_judged": len(games), "gamed_pairs_judged": len(gamed_games),
                         "failed_judgements": result.failed,
                         "max_tokens": max_tokens, "seed": seed, "judge_settings": judge_settings,
                         "debias": "both orders, averaged" if judge_settings["debias"] else "one order",
                         "outcomes": outcomes,
                         "length_unit": "words (whitespace-separated)",
                         "judge_check": {k: check.get(k) for k in ("status", "pairs", "accuracy", "accuracy_ci95",
                                                                   "message")} if check else "not run here"}
        write_reports(info, out)
    return info


def cmd_rank(args, judge_cfg: EngineConfig) -> int:
    """The CLI command (rlaif/cli.py parses the flags and builds the judge's engine block)."""
    from rlaif.constitution import load_constitution
    from rlaif.prompts_io import read_prompts

    prompts, seen = [], set()
    for p in read_prompts(args.prompts):  # a repeated prompt is ranked once
        if p["id"] not in seen:
            seen.add(p["id"])
            prompts.append(p)
    prompts = prompts[: args.n_prompts]
    constitution = load_constitution(args.constitution)
    # a checkpoint's engine block is the judge's (device, batch size, server settings) with its own model
    checkpoints = resolve_checkpoints(list(args.checkpoints), prompts, judge_cfg, str(args.prompts))
    check_spec(judge_cfg, args.model, "--judge")

    def load_judge():
        from rlaif.backends import load_engine
        from rlaif.judge import Judge, JudgeConfig

        return Judge(load_engine(judge_cfg), constitution, JudgeConfig(seed=args.seed))

    info = rank(checkpoints, prompts, None, args.out, max_tokens=args.max_tokens, seed=args.seed,
                n_boot=args.bootstrap, batch_size=judge_cfg.batch_size, source=str(args.prompts),
                judge_loader=load_judge, overwrite=args.overwrite, outcomes=args.outcomes,
                judge_check=not args.skip_judge_check)
    for r in info["players"]:
        lo, hi = r["ci95"]
        lc = ("(the LC baseline)" if r["name"] == info["baseline"]
              else f"LC win rate vs {info['baseline']} {_pct(r.get('lc_vs_baseline'))}"
              + (" (95 % CI {:.3f}-{:.3f})".format(*r["lc_vs_baseline_ci95"]) if r.get("lc_vs_baseline_ci95") else ""))
        print(f"{r['rank']:>2}. {r['name']}: Elo {r['elo']:.0f} (95 % CI {lo:.0f}-{hi:.0f}), {lc}")
    print(f"rank: {info['setup']['pairs_judged']} judgements on {info['setup']['n_prompts']} prompts -> "
          f"{Path(args.out) / 'ranking.json'}, ranking.md, ranking.html")
    if info["setup"]["failed_judgements"]:
        print(f"{info['setup']['failed_judgements']} judgements failed after retries; see "
              f"{Path(args.out) / 'failures.jsonl'}; run the same command again to retry them", file=sys.stderr)
        return 1
    return 0


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"
