"""What a model returns, as the ``(batch, classes)`` tensor every method works on.

Models from model hubs do not always return a tensor. Hugging Face ``transformers``
classifiers return a ``ModelOutput`` (``ImageClassifierOutput`` and friends), an
``OrderedDict`` subclass whose ``.logits`` attribute holds the scores; other code
returns a plain ``dict``. :func:`logits_of` accepts, everywhere a model's output is used
as class scores:

* a ``torch.Tensor``, as it is;
* a ``Mapping`` with a ``.logits`` tensor attribute (a Hugging Face ``ModelOutput``:
  recognised by duck typing, ``transformers`` is never imported);
* a ``Mapping`` holding the tensor under the key :data:`LOGITS_KEY` (``"logits"``).

Anything else is a ``TypeError`` that names the type, the keys found and what is
accepted; a tuple (``return_dict=False``, or a model returning several heads) gets the
hint to select the logits with a function.
:func:`~captum_regularized._internal.captum_compat.run_forward`, the one way the
attribution methods and the metrics call a model, applies it; the training losses and
the training helpers apply it to their own forward passes. The model itself is never
wrapped, so its identity (layers for Grad-CAM, modes, hooks, ``nn.DataParallel``
unwrapping) is untouched. :class:`LogitsOnly` is the module form, for code that needs
a module returning a tensor (Captum's own methods in the Quantus adapter).
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
    """The class-score tensor of a model output (tensor, ``ModelOutput`` or dict).

    Parameters
    ----------
    output : Any
        What the model returned.
    who : str
        Named in the error message (``"forward_func"``, ``"the model"``, ...).

    Returns
    -------
    Tensor
        ``output`` itself when it is a tensor; else its ``.logits`` tensor (a Hugging
        Face ``ModelOutput``) or its ``"logits"`` entry (a dict).

    Raises
    ------
    TypeError
        For any other output: a tuple or list, a dict without a ``"logits"`` tensor, a
        string, ``None``.

    Examples
    --------
    >>> scores = torch.zeros(2, 3)
    >>> logits_of(scores) is scores, logits_of({"logits": scores}) is scores
    (True, True)
    >>> try:
    ...     logits_of({"scores": scores})
    ... except TypeError as error:
    ...     print(error)
    the model must return one (batch, classes) tensor of class scores, a Hugging Face \
ModelOutput with .logits or a dict with key 'logits'; got a dict with keys ['scores']
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
    """A module returning ``logits_of(model(...))``: the model as a submodule, unchanged.

    Its modules, parameters, modes and devices are the model's (``.to()``, ``.eval()``
    and hooks on ``model``'s layers act as on the model), so a layer of ``model`` is a
    layer of the wrapper too.

    Parameters
    ----------
    model : nn.Module
        The model, returning a tensor, a ``ModelOutput`` or a dict with ``"logits"``.

    Examples
    --------
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = nn.Linear(2, 3)
    ...     def forward(self, x):
    ...         return {"logits": self.fc(x)}
    >>> net = Net()
    >>> wrapped = LogitsOnly(net)
    >>> wrapped(torch.zeros(4, 2)).shape, any(m is net.fc for m in wrapped.modules())
    (torch.Size([4, 3]), True)
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return logits_of(self.model(*args, **kwargs))
