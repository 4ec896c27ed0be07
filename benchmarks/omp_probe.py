"""Decode and prefill throughput of the engine in a fresh process, for comparing OpenMP wait policies
(`OMP_WAIT_POLICY` is read once, when the OpenMP runtime starts, so each policy needs its own
process). Run by benchmarks/run.py (`--only omp`); prints one JSON line.

Why: on a CPU shared with other busy processes, OpenMP threads that spin-wait at every parallel
region's barrier lose their time slices to each other; decode runs thousands of small parallel
regions per token, so it suffers most.
"""

import json
import os
import sys
import time


def main() -> None:
    prompts, tokens = int(sys.argv[1]), int(sys.argv[2])
    from benchmarks.common import hh_pairs, load_engine, red_team_prompts
    from benchmarks.engine import labeler_requests
    from rlaif.backends.base import GenerationRequest

    engine = load_engine()
    reqs = [GenerationRequest(m, temperature=0.0, max_tokens=tokens) for m in red_team_prompts(prompts)]
    engine.generate(reqs[:1])
    t = time.perf_counter()
    n = sum(c.completion_tokens for c in engine.generate(reqs))
    decode = n / (time.perf_counter() - t)
    oreqs = labeler_requests(hh_pairs(max(1, prompts // 2)))
    t = time.perf_counter()
    engine.option_logprobs(oreqs, ["A", "B"])
    dt = time.perf_counter() - t
    ptok = sum(len(engine._prompt_ids(r.messages, r.prefill)) for r in oreqs)
    print(json.dumps({"policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"), "decode_tok_s": decode,
                      "prefill_tok_s": ptok / dt, "load": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
