"""One sentence on why a claim did not hold: the mechanism where the study knows it,
otherwise what the numbers say (worse on average, or better by less than the spread)."""

from __future__ import annotations

from typing import Any

__all__ = ["MECHANISMS", "why_not_held"]

MECHANISMS: dict[str, dict[str, str]] = {
    "signed_maps": {
        phrase: (
            f"Allegiance deletion skips a map's zero pixels, and the {name} map is zero "
            f"wherever {condition}, so at each fraction it deletes fewer pixels than the "
            "dense |gradient| map and the prediction survives longer."
        )
        for phrase, name, condition in (
            ("positive map", "positive", "the gradient is negative"),
            ("negative map", "negative", "the gradient is positive"),
            ("inactive map", "inactive", "the target's gradient does not lose to every "
             "other class's"),
            ("active map", "active", "the target's gradient does not beat every other "
             "class's"),
        )
    },
    "rsi_grad_cam": {},
    "guided_gradients": {},
    "norm_adversarial": {},
}
"""Per section key: a phrase of the claim text to the mechanism that explains its
failure (the first phrase found in the claim wins, so longer phrases come first)."""


def why_not_held(section: str, claim: dict[str, Any]) -> str:
    """A sentence on why ``claim`` (a ``results.json`` claim record) did not hold.

    Examples
    --------
    >>> claim = {"text": "new beats old", "improvement_mean": -0.02,
    ...          "improvement_spread": 0.01, "seeds": 3, "margin": 0.0}
    >>> why_not_held("demo", claim)
    'The method was worse on average (-0.020).'
    """
    mean, spread, margin = claim["improvement_mean"], claim["improvement_spread"], claim["margin"]
    if margin:
        numbers = (f"The change ({mean:+.3f}, seed-to-seed spread {spread:.3f}) is not "
                   f"within the margin of {margin:g}.")
    elif mean == 0:
        numbers = "No difference between the two on any seed."
    elif mean < 0:
        numbers = f"The method was worse on average ({mean:+.3f})."
    else:
        numbers = (f"Better on average ({mean:+.3f}), but by less than the seed-to-seed "
                   f"spread ({spread:.3f}).")
    for phrase, mechanism in MECHANISMS.get(section, {}).items():
        if phrase in claim["text"]:
            return f"{numbers} {mechanism}"
    return numbers
