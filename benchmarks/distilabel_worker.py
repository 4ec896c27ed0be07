"""The peer side, run with the separate venv that has distilabel (.venv-bench): distilabel 1.5.3's
UltraFeedback task (AI feedback: rates each of the generations 1–5 with a rationale, parsed from
generated text) through its TransformersLLM, on pairs prepared by benchmarks/distilabel_peer.py.

    .venv-bench/bin/python benchmarks/distilabel_worker.py INPUT.json

INPUT.json: {"model": DIR, "rows": [{"instruction", "generations": [a, b]}], "max_new_tokens": T,
"batch": B, "threads": N}. Prints one JSON line: load seconds, label seconds (task.process over all
rows, after one untimed warm-up row), how many rows got both ratings, generated-token estimate.
"""

import json
import sys
import time


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    from distilabel.models.llms import TransformersLLM
    from distilabel.steps.tasks import UltraFeedback

    t0 = time.time()
    llm = TransformersLLM(model=spec["model"], device="cpu", torch_dtype="float32",
                          generation_kwargs={"max_new_tokens": spec["max_new_tokens"], "do_sample": False,
                                             "temperature": 1.0, "repetition_penalty": 1.0})
    task = UltraFeedback(llm=llm, aspect="overall-rating", input_batch_size=spec["batch"], use_default_structured_output=False)
    task.load()
    load_s = time.time() - t0
    rows = spec["rows"]
    next(task.process(rows[:1]))  # warm-up
    t = time.time()
    out = []
    for s in range(0, len(rows), spec["batch"]):
        out += next(task.process(rows[s:s + spec["batch"]]))
    label_s = time.time() - t
    both = sum(1 for r in out if r.get("ratings") and all(x is not None for x in r["ratings"]))
    tok = llm._pipeline.tokenizer
    gen_tokens = sum(len(tok(r["raw_output_ultra_feedback_0"] if "raw_output_ultra_feedback_0" in r else
                             (r.get("distilabel_metadata") or {}).get("raw_output_ultra_feedback_0") or "")["input_ids"])
                     for r in out)
    print(json.dumps({"rows": len(rows), "load_s": load_s, "label_s": label_s, "both_rated": both,
                      "generated_tokens": gen_tokens, "sample": {k: out[0].get(k) for k in ("ratings", "rationales")},
                      "distilabel": __import__("distilabel").__version__}))


if __name__ == "__main__":
    main()
