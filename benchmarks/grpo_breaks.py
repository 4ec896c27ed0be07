"""Break GRPO on purpose and measure the learning test's rule arm (tests/train/test_learning.py): does the
test catch it? Each break is patched into this process only (the tree is left as it is):

- `sign`: the advantage's sign flipped inside the loss (rlaif.train.grpo_loop.grpo_loss gets −A);
- `prompt`: the loss on prompt tokens — the log-probs the loss sees are those of the last prompt
  tokens (read from the same forward pass) instead of the reply's, under the reply mask.

    python -m benchmarks.grpo_breaks --break sign|prompt|none [--advantage grpo|rloo] [--seed 0] [--out DIR]

Prints one JSON line with the Effect (before, after, delta in tokens of held-out greedy reply length).
About as long as one arm of the learning test.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))


def break_sign() -> None:
    from rlaif.train import grpo_loop

    real = grpo_loop.grpo_loss
    grpo_loop.grpo_loss = lambda logp, old, adv, *a, **k: real(logp, old, -adv, *a, **k)


def break_prompt() -> None:
    import torch

    from rlaif.train import grpo_loop
    from rlaif.train.maths import token_logps

    seen: dict = {}
    real_disable = grpo_loop.disable_dropout

    def stash(module, args, kwargs):
        seen["ids"] = kwargs.get("input_ids", args[0] if args else None)

    def disable_and_watch(model):
        model.register_forward_pre_hook(stash, with_kwargs=True)
        return real_disable(model)

    def prompt_logps(logits, responses, prompt_len, temperature):
        T, P = responses.shape[1], prompt_len
        k = min(T, P - 1)
        lg = logits[:, P - k - 1:P - 1].float() / temperature
        lp = token_logps(lg, seen["ids"][:, P - k:P])
        if k < T:  # fewer prompt tokens than reply columns: pad on the left
            lp = torch.cat([lp.new_zeros(lp.shape[0], T - k), lp], 1)
            lg = torch.cat([lg.new_zeros(lg.shape[0], T - k, lg.shape[2]), lg], 1)
        return lp, lg

    grpo_loop.disable_dropout = disable_and_watch
    grpo_loop.response_logps = prompt_logps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.grpo_breaks", description=__doc__.splitlines()[0])
    ap.add_argument("--break", dest="kind", choices=["sign", "prompt", "none"], required=True)
    ap.add_argument("--advantage", choices=["grpo", "rloo"], default="grpo")
    ap.add_argument("--rule", choices=["shorter", "random"], default="shorter")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from learning_helpers import SIZES, Experiment

    if a.kind == "sign":
        break_sign()
    elif a.kind == "prompt":
        break_prompt()
    exp = Experiment(Path(a.out or tempfile.mkdtemp(prefix="rlaif-grpo-break-")), SIZES)
    effect = exp.grpo(a.rule, a.seed, a.advantage)
    print(json.dumps({"break": a.kind, **effect.row()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
