"""Direct scoring (d-RLAIF, Lee et al. 2023): a reply rated 1–10 against a principle, read as the
probability-weighted mean over the score tokens, normalised to [0, 1]:

    s = (E[score] − 1) / 9,   E[score] = Σ_k k · p(k),   k = 1..10

"10" is read in two steps (see `soft_labels.score_distribution`). First the next-token distribution
over the first-token options: "1".."9", plus "10" itself where the tokenizer has it as one token
(GPT-2, Llama-3; the engine says so, `is_single_token`), normalised over those options (p̃). Then
one more forward pass with "1" appended gives q = p(next token "0" | "1"), which covers tokenizers
that spell "10" as "1", "0" (SmolLM2 splits numbers into digits):

    p(1) = p̃₁ · (1 − q),   p(10) = p̃₁₀ + p̃₁ · q,   p(k) = p̃_k for k = 2..9

Engines that reuse shared prefixes run both reads in one call (the second costs one token); on
others the second pass is skipped when p̃₁ ≤ 10⁻³, which moves s by at most p̃₁. A server (the
openai engine) cannot say which strings are one token, so it is always asked for "10" too; a "10"
absent from its `top_logprobs` is read as no mass. `Judge.score_many` builds the requests."""

from __future__ import annotations

import math
from typing import Sequence

from rlaif.backends.base import Engine, OptionLogprobs, OptionRequest, option_is_single_token
from rlaif.judge.soft_labels import DIGITS, TEN, expected_score, score_distribution

TEN_THRESHOLD = 1e-3


def first_token_options(engine: Engine) -> list[str]:
    """"1".."9", and "10" unless the engine knows its tokenizer has no single token for it."""
    return list(DIGITS) + ([] if option_is_single_token(engine, TEN) is False else [TEN])


def _read_ten(lp: OptionLogprobs) -> OptionLogprobs:
    """A "10" the engine did not see (absent, or floored by a server) carries no mass."""
    if TEN not in lp.floored and TEN in lp:
        return lp
    return OptionLogprobs({**lp, TEN: -math.inf}, [o for o in lp.floored if o != TEN])


def score_requests(engine: Engine, requests: Sequence[OptionRequest], ten_threshold: float = TEN_THRESHOLD) -> list[dict]:
    """Direct scores of prepared requests: the first token ("1".."9", and "10" where it is one token),
    then "0" after "1".

    An engine that reuses shared prompt prefixes (`engine.prefix_reuse`: the transformers and gguf
    engines) gets both in one call: each request and its continuation by "1" share the whole prompt,
    so the second read costs one token on top of the first one's cache. Other engines (servers,
    where every request is paid for) get a second call only for the requests whose p̃₁ exceeds
    `ten_threshold`; skipping it reads every "1" as 1 rather than 10, which moves the normalised
    score by at most p̃₁ (≤ ten_threshold)."""
    firsts = first_token_options(engine)
    if getattr(engine, "prefix_reuse", False):
        both = engine.option_logprobs([*requests, *(OptionRequest(r.messages, r.prefill + "1") for r in requests)],
                                      [*firsts, "0"])
        n = len(requests)
        first = [_read_ten(OptionLogprobs({o: lp[o] for o in firsts}, [o for o in lp.floored if o in firsts]))
                 for lp in both[:n]]
        zero = dict(enumerate(OptionLogprobs({"0": lp["0"]}, [o for o in lp.floored if o == "0"]) for lp in both[n:]))
    else:
        first = [_read_ten(lp) for lp in engine.option_logprobs(list(requests), firsts)]
        need = [i for i, lp in enumerate(first) if score_distribution(lp, -math.inf)[0] > ten_threshold]
        tens = engine.option_logprobs([OptionRequest(requests[i].messages, requests[i].prefill + "1")
                                       for i in need], ["0"]) if need else []
        zero = {i: lp for i, lp in zip(need, tens)}
    out = []
    for i, lp1 in enumerate(first):
        lp0 = zero.get(i, OptionLogprobs({"0": -math.inf}))
        dist = score_distribution(lp1, lp0["0"])
        out.append({"score": expected_score(dist), "distribution": [round(x, 6) for x in dist],
                    "floored": sorted(set(getattr(lp1, "floored", ())) | set(getattr(lp0, "floored", ())))})
    return out


__all__ = ["TEN_THRESHOLD", "first_token_options", "score_requests"]
