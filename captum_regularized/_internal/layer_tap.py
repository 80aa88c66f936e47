"""One layer's activation out of a forward pass, and the gradient of a score with respect to it.

Layer methods explain what a layer computes: they need the tensor a layer outputs (or
receives) during one forward pass, on the autograd graph, and ``dS/dA`` for a score
``S``. :class:`LayerTap` gets both with a forward hook that acts only while a pass runs
inside :meth:`LayerTap.tapping` (or :meth:`LayerTap.run`), so a backward pass that runs
the layer again (non-reentrant activation checkpointing recomputes its block) is left
alone, and the hook is registered through a
:class:`~captum_regularized._internal.model_state.HookBag`, whose owner removes it.

Users: :class:`~captum_regularized.attr.LayerRSIGradCam` (many path points per pass;
the gradient stops at the layer), :class:`~captum_regularized.attr.LayerGradCamPlusPlus`
(one pass; the gradient stops at the layer), :class:`~captum_regularized.attr.GuidedGradCam`
(the same pass also serves the guided gradient with respect to the inputs) and
:class:`~captum_regularized.attr.LayerScoreCam` (:meth:`LayerTap.run_forward_only`: the
activation alone, without autograd).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from captum_regularized._internal.captum_compat import run_forward
from captum_regularized._internal.input_gradients import fresh_leaf
from captum_regularized._internal.model_state import HookBag

__all__ = ["LayerTap"]


class LayerTap:
    """Hand back one layer's activation of a forward pass, differentiable.

    The kept tensor is the one on the graph; the layer (for its input) or the rest of
    the model (for its output) gets a copy, so an in-place operation after the tap (an
    in-place ReLU right after the layer) cannot change the kept values or their
    gradient. A tensor that is not on the graph (it does not depend on the inputs) is
    replaced by a leaf that requires grad.

    With ``stop_at_layer=True`` (the default) a layer's *output* is kept as a detached
    leaf, and :meth:`run` runs the pass without autograd up to the layer; the hook turns
    autograd on for the rest. Gradients with respect to the leaf are then exactly
    ``dS/dA`` and cost only the backward pass through the part *after* the layer;
    nothing before the layer keeps saved tensors. A layer's *input* may have other uses
    besides the layer (a skip connection adds it back after the block), and the gradient
    must flow through all of them, so for an input the whole pass runs with autograd and
    the input tensor itself is kept, as Captum's layer methods do. With
    ``stop_at_layer=False`` the output is kept on the graph too (for methods that also
    back-propagate through the layer to the inputs).

    A layer that runs with autograd switched off *inside* the forward pass (reentrant
    checkpointing, ``use_reentrant=True``, runs its block that way; so does a
    ``torch.no_grad()`` block) has no graph to the output, and :meth:`activation` says
    so.

    Parameters
    ----------
    layer : nn.Module
        The layer to tap. It must run exactly once per forward pass.
    hooks : HookBag
        Where the hook handle is kept for removal.
    use_input : bool
        Tap the layer's (first positional) input instead of its output.
    stop_at_layer : bool
        For an output: keep it as a detached leaf (gradients stop at the layer).

    Examples
    --------
    >>> from captum_regularized._internal.model_state import HookBag
    >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    >>> bag = HookBag()
    >>> tap = LayerTap(model[0], bag)
    >>> out, act = tap.run(model, (torch.ones(3, 2),), None)
    >>> torch.allclose(tap.gradient(out), model[1].weight.expand(3, 2))
    True
    >>> bag.remove_all()
    """

    def __init__(
        self,
        layer: nn.Module,
        hooks: HookBag,
        use_input: bool = False,
        *,
        stop_at_layer: bool = True,
    ) -> None:
        self._captured: list[torch.Tensor] = []
        self._calls = 0
        self._active = False  # True only while a pass runs inside tapping()
        self._ran_without_autograd = False
        self._forward_only = False  # True only inside run_forward_only()
        self._use_input = use_input
        self._cut = stop_at_layer and not use_input
        if use_input:
            hooks.add(layer.register_forward_pre_hook(self._take_input))
        else:
            hooks.add(layer.register_forward_hook(self._take_output))

    def _keep(self, value: Any) -> torch.Tensor:
        """Count the call, keep the tensor of the graph and return the copy to pass on."""
        self._calls += 1
        what = "input" if self._use_input else "output"
        if self._calls > 1:
            raise ValueError(
                "layer ran more than once in one forward pass; choose a layer (module) "
                "that is used exactly once"
            )
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"the layer's {what} must be one tensor, got {type(value).__name__} "
                f"(layers with several {what}s are not supported)"
            )
        if self._forward_only:  # a detached copy; the pass goes on without autograd
            kept = value.detach()
            self._captured.append(kept)
            return kept.clone()
        if self._cut:
            torch.set_grad_enabled(True)  # the rest of the pass builds a graph back to the leaf
        else:  # off here means that the forward pass turned autograd off around the layer
            self._ran_without_autograd = not torch.is_grad_enabled()
        kept = value if value.requires_grad and not self._cut else value.detach().requires_grad_()
        self._captured.append(kept)
        return kept.clone()  # a non-leaf copy, so in-place ops on it are allowed

    def _take_output(self, module: nn.Module, args: Any, output: Any) -> torch.Tensor | None:
        if not self._active:  # a recomputation during backward: leave it as it is
            return None
        return self._keep(output)

    def _take_input(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not self._active:  # a recomputation during backward: leave it as it is
            return None
        if not args:
            raise TypeError("the layer was called without positional inputs to attribute to")
        return (self._keep(args[0]), *args[1:])

    @contextlib.contextmanager
    def tapping(self) -> Iterator[None]:
        """Keep the layer's activation of the forward pass run inside this block."""
        self._captured.clear()
        self._calls = 0
        self._ran_without_autograd = False
        self._active = True
        try:
            yield
        finally:
            self._active = False

    def activation(self) -> torch.Tensor:
        """The kept activation of the last pass.

        Raises
        ------
        ValueError
            When the layer did not run during the pass, or ran with autograd switched
            off inside it (reentrant activation checkpointing around the layer, or a
            ``torch.no_grad()`` block).
        """
        if not self._captured:
            raise ValueError(
                "layer did not run during the forward pass (forward_func never ran it); "
                "choose a layer (module) on the path from the inputs to the output"
            )
        if self._ran_without_autograd:
            raise ValueError(
                "the layer ran with autograd switched off inside forward_func, so no autograd "
                "graph links it to the output; most likely it runs inside reentrant "
                "activation checkpointing (torch.utils.checkpoint.checkpoint(..., "
                "use_reentrant=True) runs its block without autograd): pass "
                "use_reentrant=False there, or choose a layer outside the checkpointed "
                "block (or outside the torch.no_grad() block)"
            )
        return self._captured[0]

    def run(
        self,
        forward_func: Callable[..., Any],
        inputs: tuple[torch.Tensor, ...],
        additional_args: tuple[Any, ...] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass; returns ``(output, activation)``.

        Raises
        ------
        ValueError
            As :meth:`activation`, and when the layer runs more than once.
        """
        with self.tapping(), torch.enable_grad():
            if not self._cut:
                # fresh leaves: the layer's input is on the graph even for a frozen model
                inputs = tuple(fresh_leaf(x) for x in inputs)
                output = run_forward(forward_func, inputs, additional_args)
            else:
                with torch.no_grad():
                    output = run_forward(forward_func, inputs, additional_args)
                    # The hook switched autograd on for the rest of the pass. Off again,
                    # with an output off the graph, means that a block around the layer
                    # ran without autograd and restored that state on exit.
                    if self._captured and not torch.is_grad_enabled():
                        self._ran_without_autograd = not output.requires_grad
        return output, self.activation()

    def run_forward_only(
        self,
        forward_func: Callable[..., Any],
        inputs: tuple[torch.Tensor, ...],
        additional_args: tuple[Any, ...] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass without autograd; returns ``(output, activation)``, both detached.

        For gradient-free layer methods: nothing builds a graph, so it also runs inside
        ``torch.inference_mode()``. The layer is checked as in :meth:`run` (it must run
        exactly once and give one tensor); :meth:`gradient` is not available afterwards.

        Examples
        --------
        >>> from captum_regularized._internal.model_state import HookBag
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> bag = HookBag()
        >>> out, act = LayerTap(model[0], bag).run_forward_only(model, (torch.ones(4, 2),), None)
        >>> act.shape, act.requires_grad, out.requires_grad
        (torch.Size([4, 3]), False, False)
        >>> bag.remove_all()
        """
        self._forward_only = True
        try:
            with self.tapping(), torch.no_grad():
                output = run_forward(forward_func, inputs, additional_args)
        finally:
            self._forward_only = False
        return output, self.activation()

    def gradient(
        self, scores: torch.Tensor, grad_kwargs: dict[str, Any] | None = None
    ) -> torch.Tensor:
        """``d(sum of scores)/d(activation)`` of the last pass.

        ``grad_kwargs`` are passed on to ``torch.autograd.grad`` (as Captum's layer
        methods pass theirs).

        Raises
        ------
        ValueError
            When the scores do not depend on the layer.
        """
        activation = self.activation()
        gradient = None
        if scores.requires_grad:
            with torch.enable_grad():
                (gradient,) = torch.autograd.grad(
                    scores.sum(), activation, allow_unused=True, **(grad_kwargs or {})
                )
        if gradient is None:
            raise ValueError(
                "the target score does not depend on the layer; check that the layer lies on "
                "the path from the inputs to the output"
            )
        return gradient
