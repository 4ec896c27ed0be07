"""Greedy text compared across two numerical paths without depending on the CPU (issue 31).

Two paths that compute the same model (a padded batch and a lone row, llama.cpp's quantised
kernels and the dequantised float32 weights, a cached prefix and a fresh one) agree only up to
rounding, and rounding differs between CPUs (AVX2, AVX-512, AMX kernels). Where the top two next
tokens are closer than that rounding, which one wins is the CPU's choice, and the greedy texts part
there. So a test compares greedy texts against a reference path, computed here with one plain
unpadded forward per step on a transformers model, only up to the first step whose top-two margin
is narrow, and says how many tokens that covers; past a near-tie it asserts nothing.

A real bug (wrong positions in a padded batch, a broken cache, another prompt) shows up as a
different token at a step with a wide margin, which fails.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GreedyPath:
    ids: list[int]  # the generated ids, end token excluded
    margins: list[float]  # top-1 minus top-2 log-probability at each step (a final end token included)
    ended: bool  # stopped on the end token within max_tokens

    def decided(self, tie: float) -> int:
        """How many leading steps have a margin of at least `tie` (the part no rounding can flip)."""
        for i, m in enumerate(self.margins):
            if m < tie:
                return i
        return len(self.margins)


def greedy_reference(net, tokenizer, prompt_ids: list[int], max_tokens: int) -> GreedyPath:
    """Greedy decoding by full unpadded forwards (no cache, no batch), with each step's margin."""
    import torch

    ids, margins, new = list(prompt_ids), [], []
    eos = tokenizer.eos_token_id
    with torch.inference_mode():
        for _ in range(max_tokens):
            logits = net(torch.tensor([ids])).logits[0, -1].double()
            logp = torch.log_softmax(logits, -1)
            top = torch.topk(logp, 2)
            margins.append(float(top.values[0] - top.values[1]))
            token = int(top.indices[0])
            if token == eos:
                return GreedyPath(new, margins, True)
            new.append(token)
            ids.append(token)
    return GreedyPath(new, margins, False)


def assert_agrees_up_to_a_near_tie(text: str, path: GreedyPath, tokenizer, tie: float, min_decided: int,
                                   what: str = "") -> int:
    """`text` (an engine's greedy reply, stripped as engines return it) equals the reference path's
    text wherever the path's margins are at least `tie`: all of it when no step is narrower, else
    the text of the steps before the first narrow one. The path must be decided for at least
    `min_decided` steps (a prompt that ties at once would test nothing). -> the decided steps."""
    k = path.decided(tie)
    assert k >= min_decided, (f"{what}: the reference path has a near-tie (margin {path.margins[k]:.3g} < {tie}) "
                              f"at step {k}; this prompt tests too little, pick another")
    if k == len(path.margins):
        want = tokenizer.decode(path.ids, skip_special_tokens=True).strip()
        assert text == want, f"{what}: {text!r} != reference {want!r} (no near-tie on the path)"
    else:
        head = tokenizer.decode(path.ids[:k], skip_special_tokens=True).strip()
        assert text.startswith(head), (f"{what}: {text!r} does not start with the reference's first {k} tokens "
                                       f"{head!r} (decided by margins >= {tie})")
    return k
