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
from captum.attr import GradientAttribution

from captum_regularized._internal.captum_compat import (
    TargetType,
    TensorOrTuple,
    attribution_call,
    log_usage,
)
from captum_regularized._internal.guided_relu import (
    GuidedActivationSwitch,
    check_guided_model,
    check_guided_rule,
    guided_forward,
)
from captum_regularized._internal.targets import target_gradients

__all__ = ["GuidedBackprop"]

class GuidedBackprop(GradientAttribution):
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
    input, as in Captum. Captum's defaults hold: ``multiplies_by_inputs`` and
    ``has_convergence_delta`` are ``False``.

    The activations are found while the model runs (modules and functional forms,
    in-place or not, a module used several times); nothing is registered on the model.
    The model is left as found: it runs in its own train/eval mode, and a training
    model's BatchNorm running statistics are written back afterwards (also under
    ``NoiseTunnel``).

    Parameters
    ----------
    model : callable
        The model, or any function of the inputs calling it, returning scores. Not
        ``torch.compile``'d (pass ``compiled._orig_mod``) and not ``nn.DataParallel``.
    rule : {"gated", "ungated"}
        The guided rule (keyword only); both are the classic rule on ReLU networks.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(num_classes=4, width=4).eval()
    >>> x = torch.rand(2, 3, 16, 16)
    >>> maps = GuidedBackprop(model).attribute(x, target=1)
    >>> maps.shape
    torch.Size([2, 3, 16, 16])

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

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
    ) -> TensorOrTuple:
        """Guided-backprop maps of ``inputs`` for each example's target score.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensor
            Floating-point inputs, batch in dim 0; not modified.
        target : any Captum target form, optional
            ``None`` means the predicted class on a ``(B, C > 1)`` output and the output
            itself on a per-example scalar output.
        additional_forward_args : optional
            Extra arguments passed to the model after the inputs.

        Returns
        -------
        Tensor or tuple of Tensor
            The guided gradients, with the form, shapes and dtypes of ``inputs``.

        Raises
        ------
        RuntimeError
            Inside ``torch.inference_mode()``; when the model modifies its input in place.
        TypeError
            For inputs that are not floating-point tensors.
        ValueError
            For inputs with NaN/infinite values, without a shared batch size or on
            another device than the model; a target out of range; a model with no
            activation the guided rule knows (the message lists them).
        """
        call = attribution_call(type(self).__name__, inputs, additional_forward_args)
        switch = GuidedActivationSwitch(self.rule)

        def recorded(
            model: Callable[..., Any], leaves: tuple[torch.Tensor, ...], args: Any
        ) -> torch.Tensor:  # the forward pass that finds the activations
            return guided_forward(model, leaves, args, switch)

        gradients = target_gradients(
            self.forward_func,
            call.inputs,
            target,
            call.additional_forward_args,
            forward=recorded,
            backward=switch.guided,  # the guided rule acts in the backward pass only
        )
        return call.output(gradients)
