"""One layer's activation out of a forward pass, and the gradient of a score with respect to it.

:class:`LayerTap` keeps the activation with a forward hook that acts only while a pass
runs inside :meth:`LayerTap.tapping`, so a recomputation during backward (activation
checkpointing) is left alone; the hook lives in a
:class:`~captum_regularized._internal.model_state.HookBag`, whose owner removes it.
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

    The kept tensor is the one on the graph; the model goes on with a copy, so an
    in-place operation after the tap cannot change it. With ``stop_at_layer`` a layer's
    output is kept as a leaf and :meth:`run` builds no graph before the layer, so
    gradients are exactly ``dS/dA`` and cost only the part after it; a layer's input
    stays on the full graph (a skip connection may reuse it), as in Captum. ``layer``
    must run exactly once per pass; ``use_input`` taps its first positional input; the
    hook's handle goes to ``hooks``.

    Examples
    --------
    >>> model, bag = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)), HookBag()
    >>> tap = LayerTap(model[0], bag)
    >>> out, act = tap.run(model, (torch.ones(3, 2),), None)
    >>> torch.allclose(tap.gradient(out), model[1].weight.expand(3, 2))
    True
    >>> bag.remove_all()
    """

    def __init__(self, layer: nn.Module, hooks: HookBag, use_input: bool = False, *,
                 stop_at_layer: bool = True) -> None:
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
        """The kept activation of the last pass (``ValueError`` if the layer did not run, or
        ran without autograd)."""
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
        self, forward_func: Callable[..., Any], inputs: tuple[torch.Tensor, ...],
        additional_args: tuple[Any, ...] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass; returns ``(output, activation)``."""
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
        self, forward_func: Callable[..., Any], inputs: tuple[torch.Tensor, ...],
        additional_args: tuple[Any, ...] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass without autograd (inference mode allowed); ``(output, activation)``.

        Examples
        --------
        >>> model, bag = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)), HookBag()
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
        """``d(sum of scores)/d(activation)``; ``ValueError`` if the scores do not depend on it."""
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
