"""Tensor helpers that engines and trainers both use (the foundation layer: torch only)."""

from __future__ import annotations

import torch


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids for left-padded sequences (what `generate` uses): each row counts from its first
    real token; padding columns get 0."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)
