"""Rule rewards for the GRPO tests that run under `accelerate launch` (imported by module path)."""


def vowels(prompts, responses) -> list[float]:
    """The share of a reply's characters that are vowels."""
    return [sum(c in "aeiou" for c in t) / max(len(t), 1) for t in responses]


def length(prompts, responses) -> list[float]:
    """The reply's length in characters, over 10."""
    return [len(t) / 10 for t in responses]
