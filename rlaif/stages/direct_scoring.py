"""Direct scoring (d-RLAIF): each reply rated 1-10 against a principle, read as the
probability-weighted mean over the score tokens, with "10" read in two steps (rlaif/stages/labeler.py's
docstring says how). `direct_scores` is also the online reward for direct RLAIF; the reward
functions over it live in rlaif/train/rewards.py."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from rlaif.backends.base import Engine, OptionLogprobs, OptionRequest, option_is_single_token
from rlaif.constitution import Constitution, Principle, load_constitution
from rlaif.errors import UserError
from rlaif.prompts_io import as_messages
from rlaif.records import record_id
from rlaif.stages.judge_prompts import conversation_text, direct_score_requests, draw_principles
from rlaif.stages.soft_labels import DIGITS, TEN, expected_score, score_distribution
from rlaif.templates import load_template

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


def direct_scores(engine: Engine, prompts_messages: Sequence[list[dict] | str], responses: Sequence[str],
                  principle: Principle | str | None = None, constitution: Constitution | str | None = None, *,
                  principles: int = 1, seed: int = 0, template: str = "label_direct",
                  max_conversation_chars: int = 3000, max_response_chars: int = 1500) -> list[float]:
    """Direct RLAIF reward: each response's probability-weighted 1–10 score, normalised to [0, 1]
    (the `score` of `direct_scores_detailed`, which also says which principles were asked)."""
    return [d["score"] for d in direct_scores_detailed(
        engine, prompts_messages, responses, principle, constitution, principles=principles, seed=seed,
        template=template, max_conversation_chars=max_conversation_chars, max_response_chars=max_response_chars)]


def direct_scores_detailed(engine: Engine, prompts_messages: Sequence[list[dict] | str], responses: Sequence[str],
                           principle: Principle | str | None = None, constitution: Constitution | str | None = None,
                           *, principles: int = 1, seed: int = 0, template: str = "label_direct",
                           max_conversation_chars: int = 3000, max_response_chars: int = 1500) -> list[dict]:
    """Direct scores with what produced them: per response {"score": mean over its principles,
    "principles": ids, "scores", "distributions": per principle, "floored": options given a floor}.

    Give a `principle` (a Principle, or its id with a `constitution`), or a `constitution` alone:
    then `principles` are drawn per prompt (seeded by the conversation, not the response), so every
    response to one prompt is asked the same question(s)."""
    if isinstance(constitution, (str, Path)):
        constitution = load_constitution(constitution)
    if isinstance(principle, str):
        if constitution is None:
            raise UserError(f"principle {principle!r}: give the constitution it belongs to")
        principle = constitution.principle(principle)
    if principle is None and constitution is None:
        raise UserError("direct_scores: give a principle or a constitution")
    tmpl = load_template(template)
    convs, resps, qs, owner, asked = [], [], [], [], []
    for j, (prompt, resp) in enumerate(zip(prompts_messages, responses)):
        msgs = as_messages(prompt, f"prompt {j}")
        chosen = [principle] if principle is not None else draw_principles(
            constitution, seed, record_id(msgs), principles)
        asked.append([pr.id for pr in chosen])
        conv = conversation_text(msgs, max_conversation_chars)
        for pr in chosen:
            convs.append(conv)
            resps.append(resp)
            qs.append(pr.comparison_question)
            owner.append(j)
    scored = score_requests(engine, direct_score_requests(tmpl, convs, resps, qs, max_response_chars))
    out = [{"principles": ids, "scores": [], "distributions": [], "floored": []} for ids in asked]
    for j, s in zip(owner, scored):
        out[j]["scores"].append(s["score"])
        out[j]["distributions"].append(s["distribution"])
        out[j]["floored"] = sorted(set(out[j]["floored"]) | set(s["floored"]))
    for d in out:
        d["score"] = sum(d["scores"]) / len(d["scores"])
    return out


__all__ = ["TEN_THRESHOLD", "first_token_options", "score_requests", "direct_scores", "direct_scores_detailed"]
