"""Guided backpropagation (Springenberg et al.) on every rectifying activation.

Called like ``captum.attr.GuidedBackprop``, equal to it on ``nn.ReLU`` models; the rule
and the activations it knows: :mod:`captum_regularized._internal.guided_relu`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from captum_regularized._internal.captum_compat import AttributionCall, TargetType
from captum_regularized._internal.guided_relu import (
    GuidedActivationSwitch,
    check_guided_model,
    check_guided_rule,
    guided_forward,
)
from captum_regularized._internal.target_gradient_attribution import TargetGradientAttribution
from captum_regularized._internal.targets import target_gradients

__all__ = ["GuidedBackprop"]


class GuidedBackprop(TargetGradientAttribution):
    r"""Guided backpropagation: the input gradient with every activation rectified.

    Ordinary backpropagation passes ``sigma'(z) * grad_out`` back through an activation
    ``y = sigma(z)``; guided backpropagation passes only positive evidence through units
    that are on:

    .. math::

        \text{grad\_in} = \sigma'(z)\, \mathbf{1}[z > 0]\, \max(\text{grad\_out}, 0)
        \quad (\texttt{rule="gated"}),

    Springenberg et al.'s rule on ReLU; ``rule="ungated"`` drops the gate. Other
    operations keep their backward. Unsupported models: :doc:`/design_notes/attribution_maps`.

    Parameters
    ----------
    model : callable
        The model, or any function of the inputs calling it, returning scores.
    rule : {"gated", "ungated"}
        The guided rule (keyword only); both are the classic rule on ReLU networks.

    Examples
    --------
    >>> from captum.attr import GuidedBackprop as CaptumGuidedBackprop
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(num_classes=4, width=4).eval()
    >>> x = torch.rand(2, 3, 16, 16)
    >>> maps = GuidedBackprop(model).attribute(x, target=1)
    >>> torch.allclose(maps, CaptumGuidedBackprop(model).attribute(x, target=1))
    True
    """

    def __init__(self, model: Callable[..., Any], *, rule: str = "gated") -> None:
        check_guided_model(model, "GuidedBackprop")
        super().__init__(model)
        self.rule = check_guided_rule(rule)

    def _maps(self, call: AttributionCall, target: TargetType) -> tuple[torch.Tensor, ...]:
        switch = GuidedActivationSwitch(self.rule)
        return target_gradients(  # the recording forward pass; the rule acts in the backward
            self.forward_func, call.inputs, target, call.additional_forward_args,
            forward=functools.partial(guided_forward, switch=switch), backward=switch.guided,
        )
