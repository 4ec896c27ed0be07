"""The shared token prefixes of one call's prompts, as a tree the transformers engine prefills top down.

A labeler call repeats most of its tokens: both debiased orders of a pair share the system text, the
instructions and the conversation; every principle of an ensemble shares everything up to its
question; every self-consistency sample shares the prompt. `prefix_tree` puts the prompts in a
radix tree over token ids: a node holds a run of tokens that every prompt under it has at that place,
its children hold what follows, and `ends` names the prompts whose last token is the node's last
token. Runs shorter than `min_shared` tokens are not worth a forward pass of their own: such a node is
merged into its children (its tokens are put in front of each child's), unless a prompt ends on it.

Prefilling each node once, on top of its parent's key/value cache, computes every prompt exactly once
per distinct prefix: `computed_tokens(roots)` tokens instead of `sum(len(prompt))`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence


@dataclass
class Node:
    tokens: list[int]  # this node's own run of tokens, after its parent's
    ends: list[int] = field(default_factory=list)  # prompts (their indices) whose last token is this node's last
    children: list["Node"] = field(default_factory=list)


def prefix_tree(seqs: Sequence[Sequence[int]], min_shared: int) -> list[Node]:
    """The top-level nodes of the tree over the (non-empty) token sequences `seqs`: every sequence is the
    tokens along the path from a top-level node to a node that lists it in `ends`."""
    if any(len(s) == 0 for s in seqs):
        raise ValueError("prefix_tree: every sequence needs at least one token")
    roots = _split(seqs, list(range(len(seqs))), 0)
    return [m for n in roots for m in _merge_short(n, min_shared)]


def _split(seqs: Sequence[Sequence[int]], idx: list[int], depth: int) -> list[Node]:
    """Nodes for the sequences `idx`, which agree on their first `depth` tokens and are all longer."""
    groups: dict[int, list[int]] = {}
    for i in idx:
        groups.setdefault(seqs[i][depth], []).append(i)
    nodes = []
    for group in groups.values():
        common = os.path.commonprefix([list(seqs[i][depth:]) for i in group]) if len(group) > 1 \
            else list(seqs[group[0]][depth:])
        end = depth + len(common)
        rest = [i for i in group if len(seqs[i]) > end]
        nodes.append(Node(list(common), [i for i in group if len(seqs[i]) == end],
                          _split(seqs, rest, end) if rest else []))
    return nodes


def _merge_short(node: Node, min_shared: int) -> list[Node]:
    node.children = [m for c in node.children for m in _merge_short(c, min_shared)]
    if node.children and not node.ends and len(node.tokens) < min_shared:
        return [Node(node.tokens + c.tokens, c.ends, c.children) for c in node.children]
    return [node]


def computed_tokens(roots: Sequence[Node]) -> int:
    """Tokens prefilled when every node runs once: the sum of the nodes' own runs."""
    return sum(len(n.tokens) + computed_tokens(n.children) for n in roots)


def is_shared(roots: Sequence[Node]) -> bool:
    """Whether any prompt shares a prefill with another (some node has children, or ends two prompts)."""
    return any(n.children or len(n.ends) > 1 for n in roots)
