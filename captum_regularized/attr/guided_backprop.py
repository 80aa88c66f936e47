"""Guided backpropagation (Springenberg et al.) on every rectifying activation.

``GuidedBackprop(model).attribute(inputs, target)`` is called exactly like
``captum.attr.GuidedBackprop`` and gives the same maps on models built from
``nn.ReLU`` modules. It differs where Captum's silently falls back to the plain
gradient: functional ReLUs (``F.relu``, ``torch.relu_``, ``x.relu()``) and the other
activations of modern image classifiers (ReLU6, LeakyReLU, PReLU, RReLU, ELU, CELU,
SELU, SiLU, Hardswish, GELU, Mish, Softplus) get the guided rule too. The rule and its
two variants (``rule="gated"``, the default, and ``rule="ungated"``) are documented in
:mod:`captum_regularized._internal.guided_relu`.
"""

from __future__ import annotations

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

    which for ReLU is Springenberg et al.'s rule ``relu(grad_out) * 1[z > 0]``.
    ``rule="ungated"`` drops the ``1[z > 0]`` gate. Every other operation (convolutions,
    pooling, BatchNorm, LayerNorm, attention softmax, sigmoid gates) keeps its ordinary
    backward. The map is the guided gradient of the sum of the target scores, one map per
    input, as in Captum, from Captum's ``attribute(inputs, target=None,
    additional_forward_args=None)``. Captum's defaults hold: ``multiplies_by_inputs``
    and ``has_convergence_delta`` are ``False``. ``attribute`` raises a ``ValueError``
    for a model with no activation the guided rule knows (the message lists them).

    The activations are found while the model runs (modules and functional forms,
    in-place or not, a module used several times); nothing is registered on the model.
    The model is left as found: it runs in its own train/eval mode, and a training
    model's BatchNorm running statistics are written back afterwards (also under
    ``NoiseTunnel``).

    Parameters
    ----------
    model : callable
        The model, or any function of the inputs calling it, returning scores. Not
        ``torch.compile``'d (pass ``compiled._orig_mod``) and without TorchScript
        submodules; an ``nn.DataParallel`` model runs its wrapped module, on that
        module's device.
    rule : {"gated", "ungated"}
        The guided rule (keyword only); both are the classic rule on ReLU networks.

    Examples
    --------
    On a network of ``nn.ReLU`` modules it gives Captum's maps:

    >>> from captum.attr import GuidedBackprop as CaptumGuidedBackprop
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(num_classes=4, width=4).eval()
    >>> x = torch.rand(2, 3, 16, 16)
    >>> maps = GuidedBackprop(model).attribute(x, target=1)
    >>> torch.allclose(maps, CaptumGuidedBackprop(model).attribute(x, target=1))
    True

    On a GELU network (where ``captum.attr.GuidedBackprop`` returns the plain gradient):

    >>> mlp = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))
    >>> gated = GuidedBackprop(mlp).attribute(torch.randn(4, 6), target=0)
    >>> ungated = GuidedBackprop(mlp, rule="ungated").attribute(torch.randn(4, 6), target=0)
    >>> gated.shape, ungated.shape
    (torch.Size([4, 6]), torch.Size([4, 6]))
    """

    def __init__(self, model: Callable[..., Any], *, rule: str = "gated") -> None:
        check_guided_model(model, "GuidedBackprop")
        super().__init__(model)
        self.rule = check_guided_rule(rule)

    def _maps(self, call: AttributionCall, target: TargetType) -> tuple[torch.Tensor, ...]:
        """The guided gradients of the target scores, one per input."""
        switch = GuidedActivationSwitch(self.rule)

        def recorded(
            model: Callable[..., Any], leaves: tuple[torch.Tensor, ...], args: Any
        ) -> torch.Tensor:  # the forward pass that finds the activations
            return guided_forward(model, leaves, args, switch)

        return target_gradients(
            self.forward_func,
            call.inputs,
            target,
            call.additional_forward_args,
            forward=recorded,
            backward=switch.guided,  # the guided rule acts in the backward pass only
        )
