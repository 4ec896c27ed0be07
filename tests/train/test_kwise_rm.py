"""The k-wise reward model: `rlaif train-rm` on rankings of K replies (Plackett–Luce).

The loss against a direct computation of −log P(τ) (the product of softmax choices), its reduction
to Bradley–Terry at K = 2 (in the loss, and in a whole training run: a K = 2 ranking file logs the
losses of the same pairs file), gradients that order the rewards as ranked, mixed K in one batch,
training on K = 4 rankings through the CLI, and one-line errors for bad ranking files."""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from train_fixtures import write_jsonl

from rlaif.errors import UserError  # noqa: E402
from rlaif.train.reward_model import (RewardConfig, plackett_luce_loss, ranking_stats, soft_bt_loss,  # noqa: E402
                                      train_reward_model)

pytestmark = pytest.mark.usefixtures("one_thread")


def direct_pl_nll(r: list[float]) -> float:
    """−log P(τ) with τ the identity: pick r[0] from all, r[1] from the rest, …"""
    total = 0.0
    for k in range(len(r)):
        total += r[k] - math.log(sum(math.exp(x) for x in r[k:]))
    return -total


def test_plackett_luce_equals_the_product_of_softmax_choices():
    rows = [[0.3, -1.2, 2.0, 0.1], [1.0, 0.5, -0.5, 0.0], [0.2, 0.9, 0.0, 0.0]]
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    got = plackett_luce_loss(torch.tensor(rows), valid)
    want = [direct_pl_nll(rows[0]), direct_pl_nll(rows[1][:3]), direct_pl_nll(rows[2][:2])]
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    # the probabilities of all K! orders sum to 1 (a distribution over rankings)
    r = rows[0]
    assert sum(math.exp(-direct_pl_nll([r[i] for i in perm])) for perm in itertools.permutations(range(4))) \
        == pytest.approx(1.0)


def test_k2_is_bradley_terry_and_the_gradient_orders_the_rewards():
    r = torch.tensor([[0.4, 1.1], [-0.3, -2.0]], requires_grad=True)
    pl = plackett_luce_loss(r, torch.ones(2, 2, dtype=torch.bool))
    bt = soft_bt_loss(r[:, 0], r[:, 1], 1.0)
    assert pl.tolist() == pytest.approx(bt.tolist(), abs=1e-7)
    r4 = torch.zeros(1, 4, requires_grad=True)
    plackett_luce_loss(r4, torch.ones(1, 4, dtype=torch.bool)).sum().backward()
    g = r4.grad[0].tolist()  # descent raises the best, lowers the worst, in rank order
    assert g[0] < g[1] < g[2] < g[3] and g[0] < 0 < g[3]


def test_ranking_accuracy_and_margin():
    r = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    acc, margin = ranking_stats(r, valid)
    assert acc.tolist() == pytest.approx([1.0, 0.5 / 3])  # second: (0,1) wrong, (0,2) wrong, (1,2) tie
    assert margin.tolist() == pytest.approx([1.0, -0.5])


def _prompt(i):
    return [{"role": "user", "content": f"tell me about {['cats', 'tea', 'maps', 'rain', 'bees', 'jazz'][i % 6]}"}]


REPLIES = ["yes, gladly: they are nice and i can say more.", "yes: they are nice.", "maybe.", "no."]


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines()]


def test_k2_rankings_train_exactly_as_the_same_pairs(tiny_dir, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": _prompt(i), "chosen": [{"role": "assistant", "content": REPLIES[i % 2]}],
         "rejected": [{"role": "assistant", "content": REPLIES[2 + i % 2]}]} for i in range(8)])
    ranks = write_jsonl(tmp_path / "ranks.jsonl", [
        {"prompt": _prompt(i), "ranked": [REPLIES[i % 2], REPLIES[2 + i % 2]]} for i in range(8)])
    common = dict(base=str(tiny_dir), batch_size=4, max_steps=3, max_length=128, learning_rate=3e-3,
                  progress=False, save=False, center_rewards_coefficient=0.01)
    train_reward_model(RewardConfig(prefs=str(pairs), output_dir=str(tmp_path / "p"), **common))
    result = train_reward_model(RewardConfig(prefs=str(ranks), output_dir=str(tmp_path / "r"), **common))
    a, b = _log(tmp_path / "p"), _log(tmp_path / "r")
    for key in ("loss", "accuracy", "margin"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], abs=1e-6), key
    assert result["train_rankings"] == 8


def test_train_rm_learns_k4_rankings_through_the_cli(tiny_dir, tmp_path, capsys):
    from rlaif.cli import main

    rows = [{"prompt": _prompt(i), "ranked": REPLIES} for i in range(12)]
    rows[0]["ranked"] = REPLIES[:3]  # a K = 3 ranking among the K = 4 ones
    train = write_jsonl(tmp_path / "rankings.jsonl", rows)
    held = write_jsonl(tmp_path / "held.jsonl", [{"prompt": _prompt(i + 3), "ranked": REPLIES} for i in range(4)])
    out = tmp_path / "rm"
    assert main(["train-rm", "--prefs", str(train), "--eval-file", str(held), "--base", str(tiny_dir),
                 "--out", str(out), "--steps", "10", "--batch-size", "4", "--lr", "3e-3", "--max-length", "128",
                 "--eval-every", "5"]) == 0
    rows = _log(out)
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
    assert rows[-1]["eval_accuracy"] > 0.9 and rows[-1]["eval_margin"] > 0
    from rlaif.train.reward_model import RewardScorer

    scores = RewardScorer(str(out))([_prompt(1)] * 4, REPLIES)
    assert scores == sorted(scores, reverse=True)  # the trained model ranks the four as taught


@pytest.mark.parametrize("record,message", [
    ({"prompt": "x", "ranked": ["only one"]}, r"rank\.jsonl:1: field 'ranked': expected a list of 2 or more"),
    ({"ranked": ["a", "b"]}, r"rank\.jsonl:1: missing field 'prompt'"),
    ({"prompt": [{"role": "user", "content": "x"}], "ranked": ["a", 3]}, r"rank\.jsonl:1: field 'ranked\[1\]'"),
])
def test_bad_ranking_records_are_one_clear_error(tiny_dir, tmp_path, record, message):
    path = write_jsonl(tmp_path / "rank.jsonl", [record])
    with pytest.raises(UserError, match=message):
        train_reward_model(RewardConfig(base=str(tiny_dir), prefs=str(path), output_dir=str(tmp_path / "o"),
                                        progress=False))


def test_a_margin_with_rankings_is_refused_naming_the_field(tiny_dir, tmp_path):
    path = write_jsonl(tmp_path / "rank.jsonl", [{"prompt": "x", "ranked": ["a", "b", "c"]}])
    with pytest.raises(UserError, match="margin_from_strength"):
        train_reward_model(RewardConfig(base=str(tiny_dir), prefs=str(path), output_dir=str(tmp_path / "o"),
                                        margin_from_strength=1.0, progress=False))
