"""What a model returns, as the ``(batch, classes)`` tensor every method works on.

:func:`logits_of` accepts a tensor, a Hugging Face ``ModelOutput`` (duck-typed by its
``.logits``; ``transformers`` is never imported) or a dict with key ``"logits"``; the
model itself is never wrapped. :class:`LogitsOnly` is the module form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["LOGITS_KEY", "LogitsOnly", "logits_of"]

LOGITS_KEY = "logits"
"""The key (or attribute) under which a dict-like model output holds its class scores."""


def _describe(output: object) -> str:
    if isinstance(output, Mapping):
        keys = [str(key) for key in output]
        return f"a {type(output).__name__} with keys {keys}"
    return f"a {type(output).__name__}"


def logits_of(output: Any, who: str = "the model") -> torch.Tensor:
    """The class-score tensor of a model output; ``TypeError`` naming ``who`` for other outputs.

    Examples
    --------
    >>> scores = torch.zeros(2, 3)
    >>> logits_of(scores) is scores, logits_of({"logits": scores}) is scores
    (True, True)
    >>> logits_of({"scores": scores})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    TypeError: the model must return ... got a dict with keys ['scores']
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        logits = getattr(output, LOGITS_KEY, None)
        if isinstance(logits, torch.Tensor):
            return logits
        logits = output.get(LOGITS_KEY)
        if isinstance(logits, torch.Tensor):
            return logits
    hint = ""
    if isinstance(output, (tuple, list)):
        hint = "; wrap the model so that it returns the logits alone (e.g. lambda x: model(x)[0])"
    raise TypeError(
        f"{who} must return one (batch, classes) tensor of class scores, a Hugging Face "
        f"ModelOutput with .logits or a dict with key {LOGITS_KEY!r}; got "
        f"{_describe(output)}{hint}"
    )


class LogitsOnly(nn.Module):
    """A module returning ``logits_of(model(...))``, with ``model`` (unchanged) as its submodule."""

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return logits_of(self.model(*args, **kwargs))
