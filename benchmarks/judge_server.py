"""The judge as a reward for other trainers (rlaif/integrations/): three ratios, each measured side
by side in one run on the embedded judge (SmolLM2-135M, CPU), the two sides alternated.

(a) server overhead: `rlaif serve-reward` in its own process, 32 concurrent clients each posting
    one OpenRLHF-shaped /get_reward request of 8 replies to one red-team prompt (query = the decode of the chat-templated
    prompt's tokens + the reply's tokens + EOS, as OpenRLHF builds it), against the in-process
    Judge scoring the same 256 (prompt, reply) pairs in one `score_many` call. Throughput ratio
    server / in-process; target >= 0.9x. The rewards of both sides are compared (<= 1e-4).
(b) micro-batching: 16 clients each posting one reply at the same moment (a barrier releases
    them) to a server that gathers concurrent requests into engine batches, against the same
    server started with --no-batching (each request judged alone, one at a time). Target >= 3x.
    Two bursts: replies to 16 different prompts, and 16 rollouts of 2 prompts (8 samples each,
    the shape GRPO groups and OpenRLHF's n_samples_per_prompt give).
(c) group rewards with prefix reuse: `Judge.group_rewards_many` in pairwise mode (round robin in
    each group of G = 8 replies to one HH-RLHF conversation: 28 pairs, both orders, 56 option
    requests per group) with the engine's
    prefix reuse on (its default) against off (`min_shared_prefix = 0`, as benchmarks/labeling.py
    turns it off). Target >= 2x; the rewards of both sides are compared (<= 1e-4).

Replies are HH-RLHF harmless dev replies cut to `reply_chars` (120 in --quick): off-topic for
their prompts, which costs nothing here (the judge reads the same number of tokens either way).
A side that loads the model warms up on a small round first; the two sides then alternate and the
best time of each is kept. (b) and (c) also give the load-independent part of their ratio: the
prompt tokens each side's engine ran through the model (from the engine's counters; the servers
report theirs on /health).

    python -m benchmarks.run --quick --only judge_server
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

from benchmarks.common import ROOT, Report, header, hh_pairs, red_team_prompts, side_by_side

SIZES = {
    "tiny": dict(clients=4, replies=2, burst=4, groups=1, group_size=4, repeats=1, reply_chars=120),
    "quick": dict(clients=32, replies=8, burst=16, groups=1, group_size=8, repeats=2, reply_chars=120),
    "full": dict(clients=32, replies=8, burst=16, groups=2, group_size=8, repeats=2, reply_chars=200),
}


# ---------------------------------------------------------------- data


def replies_pool(n: int, reply_chars: int) -> list[str]:
    """n HH-RLHF harmless dev replies (both sides of the pairs), cut to `reply_chars`."""
    pairs = hh_pairs((n + 1) // 2)
    return [r[:reply_chars] for p in pairs for r in (p["a"], p["b"])][:n]


def rollouts(n_prompts: int, per_prompt: int, reply_chars: int) -> tuple[list[list[dict]], list[list[str]]]:
    """Red-team prompts (one user turn each, the prompts an RLAIF harmlessness run samples from),
    each with `per_prompt` different HH-RLHF replies."""
    pool = replies_pool(n_prompts * per_prompt, reply_chars)
    return red_team_prompts(n_prompts), [pool[i * per_prompt:(i + 1) * per_prompt] for i in range(n_prompts)]


def groups_of_replies(n_groups: int, group_size: int, reply_chars: int) -> tuple[list[list[dict]], list[list[str]]]:
    """HH-RLHF conversations (the dev pairs' multi-turn prompts), each with `group_size` replies:
    its own two and those of the pairs after it."""
    pairs = hh_pairs(n_groups + group_size)
    pool = [r[:reply_chars] for p in pairs for r in (p["a"], p["b"])]
    return [pairs[i]["prompt"] for i in range(n_groups)], [pool[2 * i:2 * i + group_size] for i in range(n_groups)]


def openrlhf_request(tokenizer, prompt: list[dict], replies: list[str]) -> dict:
    """One /get_reward body as OpenRLHF builds its items: prompt text from the chat template, query
    = decode(prompt ids + reply ids + EOS) with special tokens kept."""
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text=text, add_special_tokens=False)["input_ids"]
    queries = [tokenizer.decode(ids + tokenizer(text=r, add_special_tokens=False)["input_ids"]
                                + [tokenizer.eos_token_id], skip_special_tokens=False) for r in replies]
    return {"query": queries, "prompts": [text] * len(replies), "labels": [None] * len(replies)}


# ---------------------------------------------------------------- servers and clients


class Server:
    """`rlaif serve-reward` in a subprocess on 127.0.0.1 (a free port)."""

    def __init__(self, *args: str, batch_size: int):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rlaif.cli", "serve-reward", "--port", "0", "--device", "cpu", "--batch-size",
             str(batch_size), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            env={k: v for k, v in os.environ.items() if k != "RLAIF_REWARD_TOKEN"})
        seen = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.kill()
                tail = seen + self.proc.stderr.read().splitlines()[-4:]
                raise RuntimeError("serve-reward did not start: " + " | ".join(tail))
            seen.append(line.strip())
            if "listening on " in line:
                self.url = line.split("listening on ", 1)[1].split()[0]
                return

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"},
                                 method="POST")
    with urllib.request.urlopen(req, timeout=1800) as r:
        return json.loads(r.read())


def health(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/health", timeout=60) as r:
        return json.loads(r.read())


def prefilled(before: dict, after: dict) -> int:
    """Prompt tokens an engine ran through the model between two readings of its counters (the
    ones a reused prefix covered left out)."""
    return ((after["prompt_tokens"] - before["prompt_tokens"])
            - (after["cached_prompt_tokens"] - before["cached_prompt_tokens"]))


def together(url: str, bodies: list[dict]) -> list[dict]:
    """Every body posted at the same moment, one client thread each (a barrier releases them)."""
    out: list = [None] * len(bodies)
    gate = threading.Barrier(len(bodies))

    def client(i):
        gate.wait()
        out[i] = post(url, bodies[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if any(o is None for o in out):
        raise RuntimeError("a client got no answer")
    return out


# ---------------------------------------------------------------- the three ratios


def server_overhead(judge, tokenizer, report: Report, s: dict, batch_size: int) -> dict:
    from rlaif.integrations.openrlhf import judge_inputs

    n, k = s["clients"], s["replies"]
    header(f"judge server (a): {n} concurrent clients x {k} replies (OpenRLHF /get_reward) vs the in-process "
           f"judge scoring the same {n * k} replies in one call")
    prompts, replies = rollouts(n, k, s["reply_chars"])
    bodies = [openrlhf_request(tokenizer, p, r) for p, r in zip(prompts, replies)]
    flat_prompts, flat_replies = [], []
    for b in bodies:  # what the server's judge is given, after it splits the queries
        jp, jr = judge_inputs(b["query"], b["prompts"])
        flat_prompts += jp
        flat_replies += jr
    server = Server(batch_size=batch_size)
    try:
        together(f"{server.url}/get_reward", bodies[:2])  # warm-up: one small round each
        judge.score_many(flat_prompts[:2 * k], flat_replies[:2 * k])
        res = side_by_side({
            "server": lambda: [x for a in together(f"{server.url}/get_reward", bodies) for x in a["rewards"]],
            "in_process": lambda: [sc.value for sc in judge.score_many(flat_prompts, flat_replies)],
        }, repeats=s["repeats"], warmup=False)
    finally:
        server.close()
    diff = max(abs(a - b) for a, b in zip(res["server"]["out"], res["in_process"]["out"]))
    rate = {k_: n * k / v["best"] for k_, v in res.items()}
    ratio = rate["server"] / rate["in_process"]
    report.add("judge-server", f"server, {n} clients x {k} replies: replies/s", rate["server"], "replies/s")
    report.add("judge-server", "in-process Judge.score_many, same replies: replies/s", rate["in_process"], "replies/s")
    report.add("judge-server", "server / in-process throughput", ratio, "x", "≥ 0.9x", ratio >= 0.9,
               note=f"max |Δ reward| {diff:.1e}")
    return {"replies": n * k, "best_s": {k_: v["best"] for k_, v in res.items()},
            "times": {k_: v["times"] for k_, v in res.items()}, "max_abs_diff": diff, "ratio": ratio}


def micro_batching(tokenizer, report: Report, s: dict, batch_size: int) -> dict:
    """(b) on two shapes of burst: 16 different prompts, and 16 rollouts of 2 prompts (8 samples
    each, as GRPO and OpenRLHF's n_samples_per_prompt send them), on the same two servers."""
    n = s["burst"]
    header(f"judge server (b): {n} clients post one reply each at the same moment: batching server vs "
           "--no-batching server")
    batched, alone = Server(batch_size=batch_size), Server("--no-batching", batch_size=batch_size)
    out = {}
    try:
        for shape, n_prompts in (("distinct prompts", n), ("rollouts of 2 prompts", 2)):
            prompts, replies = rollouts(n_prompts, n // n_prompts, s["reply_chars"])
            bodies = [openrlhf_request(tokenizer, p, [r]) for p, rs in zip(prompts, replies) for r in rs]
            out[shape] = burst(batched, alone, bodies, report, s, shape)
    finally:
        batched.close()
        alone.close()
    return out


def burst(batched: Server, alone: Server, bodies: list[dict], report: Report, s: dict, shape: str) -> dict:
    n = len(bodies)
    for srv in (batched, alone):  # warm-up: two requests each
        together(f"{srv.url}/get_reward", bodies[:2])
    before = {k: health(srv.url)["engine"] for k, srv in (("batched", batched), ("alone", alone))}
    res = side_by_side({
        "batched": lambda: [a["rewards"][0] for a in together(f"{batched.url}/get_reward", bodies)],
        "alone": lambda: [a["rewards"][0] for a in together(f"{alone.url}/get_reward", bodies)],
    }, repeats=s["repeats"], warmup=False)
    tokens = {k: prefilled(before[k], health(srv.url)["engine"]) for k, srv in (("batched", batched),
                                                                              ("alone", alone))}
    diff = max(abs(a - b) for a, b in zip(res["batched"]["out"], res["alone"]["out"]))
    ratio = res["alone"]["best"] / res["batched"]["best"]
    ideal = tokens["alone"] / max(tokens["batched"], 1)
    report.add("judge-server", f"{n} simultaneous requests ({shape}), batching: replies/s",
               n / res["batched"]["best"], "replies/s")
    report.add("judge-server", f"{n} simultaneous requests ({shape}), each alone: replies/s",
               n / res["alone"]["best"], "replies/s")
    report.add("judge-server", f"micro-batching / each request alone ({shape})", ratio, "x", "≥ 3x", ratio >= 3,
               note=f"tokens prefilled alone / batched {ideal:.2f}x; max |Δ reward| {diff:.1e}")
    return {"requests": n, "best_s": {k: v["best"] for k, v in res.items()},
            "times": {k: v["times"] for k, v in res.items()}, "max_abs_diff": diff, "ratio": ratio,
            "tokens_prefilled": tokens, "token_ratio": ideal}


def group_prefix_reuse(judge, report: Report, s: dict) -> dict:
    from benchmarks.labeling import prefix_reuse

    g, n = s["group_size"], s["groups"]
    pairs = g * (g - 1) // 2
    header(f"judge server (c): pairwise group rewards, {n} group(s) of G = {g} ({pairs} pairs, both orders), "
           "prefix reuse on vs off")
    prompts, groups = groups_of_replies(n, g, s["reply_chars"])

    tokens = {"reuse_on": 0, "reuse_off": 0}

    def rewards(on: bool):
        with prefix_reuse(judge.engine, on):
            before = dict(judge.engine.counters)
            out = [r for grp in judge.group_rewards_many(prompts, groups, "pairwise") for r in grp]
            tokens["reuse_on" if on else "reuse_off"] += prefilled(before, judge.engine.counters)
            return out

    # the engine is warm from (a); each side's first call is timed
    res = side_by_side({"reuse_on": lambda: rewards(True), "reuse_off": lambda: rewards(False)},
                       repeats=s["repeats"], warmup=False)
    diff = max(abs(a - b) for a, b in zip(res["reuse_on"]["out"], res["reuse_off"]["out"]))
    ratio = res["reuse_off"]["best"] / res["reuse_on"]["best"]
    for k in ("reuse_on", "reuse_off"):
        report.add("judge-server", f"group rewards G={g} pairwise, prefix reuse {k[6:]}: groups/s", n / res[k]["best"],
                   "groups/s")
    ideal = tokens["reuse_off"] / max(tokens["reuse_on"], 1)
    report.add("judge-server", "group rewards: prefix reuse on / off", ratio, "x", "≥ 2x", ratio >= 2,
               note=f"tokens prefilled off / on {ideal:.2f}x; max |Δ reward| {diff:.1e}")
    return {"groups": n, "group_size": g, "best_s": {k: v["best"] for k, v in res.items()},
            "times": {k: v["times"] for k, v in res.items()}, "max_abs_diff": diff, "ratio": ratio,
            "tokens_prefilled": tokens, "token_ratio": ideal}


def run(report: Report, mode: str) -> dict:
    from benchmarks.common import load_engine
    from rlaif.judge import Judge

    s = SIZES[mode]
    engine = load_engine()
    judge = Judge(engine, "harmless")
    try:
        batch = engine.cfg.batch_size
        return {"sizes": s, "engine_batch": batch,
                "server_overhead": server_overhead(judge, engine.tokenizer, report, s, batch),
                "micro_batching": micro_batching(engine.tokenizer, report, s, batch),
                "group_prefix_reuse": group_prefix_reuse(judge, report, s)}
    finally:
        judge.close()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=sorted(SIZES), default="quick")
    args = ap.parse_args()
    r = Report(args.mode)
    print(json.dumps(run(r, args.mode), default=str))
