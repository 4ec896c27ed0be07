"""Does training learn from the judge's signal? Effect sizes of tests/train/test_learning.py over seeds.

For each seed, trainer (DPO; KTO on the same preference file, chosen desirable and rejected
undesirable; PPO with the judge's direct score as reward) and judge rule ("shorter":
the shorter reply wins with p = 0.9; "random": the same confidence on a side that ignores length),
it prints the mean greedy reply length on the held-out prompts before and after training and the
change Δ (tokens), then per trainer and rule the mean Δ and the largest |Δ| over the seeds. The
experiment, sizes and helpers are the test's own (tests/support/learning_helpers.py).

    python -m benchmarks.learning [--seeds 0,1,2] [--trainers dpo,kto,ppo] [--out DIR]

About 2 minutes per (trainer, seed) pair on an idle 2-core CPU; results.json goes under --out.

Breaking a trainer on purpose (seed 0, rule arm; each break applied to a copy of the tree, then
`Experiment(tmp, SIZES).dpo("shorter", 0)`, `.kto(...)` or `.ppo(...)` from tests/support/learning_helpers.py):

    break                                                         Δ rule arm   the test
    rlaif/train/dpo.py: logsigmoid(beta*h) <-> logsigmoid(-beta*h)   +9.82        fails
    rlaif/train/kto.py kto_loss(): r = ref_logps - logps            +9.82        fails
      (the implied reward's sign flipped; unbroken KTO: -16.64)
    rlaif/train/ppo.py: pg1/pg2 = +advantages * ratio               +8.18        fails
    rlaif/train/encoding.py encode(): mask 1 on the prompt, 0 on     0.00        fails
      the completion (DPO)
    unbroken (DPO)                                                  -10.46       passes
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
from learning_helpers import RULES, SIZES, Experiment  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.learning", description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--trainers", default="dpo,kto,ppo", help="comma-separated: dpo, kto, ppo, grpo, rloo, simpo, orpo "
                    "(default dpo,kto,ppo)")
    ap.add_argument("--out", default=None, help="folder for the runs and results.json (default: a temp dir)")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    trainers = [t for t in args.trainers.split(",") if t]
    if not trainers or not set(trainers) <= {"dpo", "kto", "ppo", "grpo", "rloo", "simpo", "orpo"}:
        ap.error(f"--trainers {args.trainers!r}: expected a comma-separated subset of dpo,kto,ppo,grpo,rloo,"
                 "simpo,orpo")
    out = Path(args.out or tempfile.mkdtemp(prefix="rlaif-learning-"))
    exp = Experiment(out, SIZES)
    print(f"held-out prompts: {len(exp.heldout)}, training prompts: {len(exp.train)}; {SIZES}", flush=True)
    print(f"starting policy: mean greedy reply {exp.before:.2f} tokens (cap {SIZES.eval_tokens})", flush=True)
    print(f"{'trainer':<8}{'rule':<9}{'seed':>5}{'before':>9}{'after':>9}{'delta':>9}{'seconds':>9}", flush=True)
    rows = []
    for seed in seeds:
        for trainer in trainers:
            for rule in RULES:
                started = time.time()
                effect = getattr(exp, trainer)(rule, seed)
                rows.append({**effect.row(), "seconds": round(time.time() - started, 1)})
                print(f"{trainer:<8}{rule:<9}{seed:>5}{effect.before:>9.2f}{effect.after:>9.2f}"
                      f"{effect.delta:>+9.2f}{rows[-1]['seconds']:>9.1f}", flush=True)
    print("\nper trainer and rule over seeds " + ",".join(map(str, seeds)) + ":", flush=True)
    summary = {}
    for trainer in trainers:
        for rule in RULES:
            ds = [r["delta"] for r in rows if r["trainer"] == trainer and r["rule"] == rule]
            summary[f"{trainer}/{rule}"] = {"mean_delta": round(sum(ds) / len(ds), 3),
                                            "max_abs_delta": round(max(abs(d) for d in ds), 3), "deltas": ds}
            print(f"  {trainer:<5}{rule:<9} mean Δ {sum(ds) / len(ds):+7.2f}   max |Δ| {max(abs(d) for d in ds):6.2f}"
                  f"   Δ per seed {ds}", flush=True)
    (out / "results.json").write_text(json.dumps({"sizes": SIZES.__dict__, "before": exp.before,
                                                   "rows": rows, "summary": summary}, indent=2) + "\n")
    print(f"\nwrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
