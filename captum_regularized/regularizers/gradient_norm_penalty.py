"""The penalty form of norm-regularized adversarial training (Gong, Dou & Farnia, 2024).

Two ways to train through the penalty on the input gradient: exact double
back-propagation or a finite difference of first-order weight gradients, for models
that cannot be differentiated twice; the default, ``mode="auto"``, takes the first
where the model allows it and the second otherwise (see
the shared mechanics in :mod:`captum_regularized.regularizers._penalty_modes`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from captum_regularized._internal.input_gradients import (
    cross_entropy_per_example,
    input_gradient,
)
from captum_regularized._internal.model_outputs import logits_of
from captum_regularized._internal.model_state import unwrap_parallel
from captum_regularized.regularizers._penalty_modes import (
    GradientScaler,
    InputGradientPenalty,
    finite_difference_penalty,
    penalty_and_direction,
    without_penalty_gradient,
)
from captum_regularized.regularizers.adversarial_norms import adversarial_norm

__all__ = ["GradientNormPenalty"]


class _Batch(NamedTuple):
    """One checked training batch, as both modes take it."""

    inputs: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor | None
    scale: torch.Tensor | None
    """The loss scale of ``grad_scaler`` (``None`` without one)."""


class GradientNormPenalty(InputGradientPenalty):
    r"""Penalty ``R*(grad_x l)`` on each example's simple-gradient map.

    The first-order form of
    :class:`~captum_regularized.regularizers.NormRegularizedAdversarialLoss`
    (Gong, Dou & Farnia, 2024): instead of training on adversarial examples, add the
    Fenchel conjugate of the adversary's cost evaluated at the loss gradient,

    ``penalty = mean_i R*(g_i)``,  ``g_i = grad_{x_i} CE(f(x_i), y_i)``,

    with ``R*(g) = eps ||g||_1`` (``"l1"``), ``eps ||g||_1 + eps2 ||g||_2^2``
    (``"elastic_net"``), ``eps sum_G ||g_G||_2`` over ``group_size x group_size``
    patches per channel (``"group"``; smaller edge patches hold the remainder when
    ``group_size`` does not divide the image side) or
    ``eps sum_j (1 - 2 M_j) g_j^2 / ||g||_2`` (``"gaze"``, needs a mask ``M``).
    ``g_i`` is not divided by the batch size (it is the gradient of the *sum* of the
    per-example losses; in train mode BatchNorm couples the examples through it).

    The call returns the logits of the model's forward pass and the penalty, the form
    that :func:`~captum_regularized.models.train_classifier` adds to the cross-entropy.
    The model's mode, flags and BatchNorm statistics are handled exactly as in a plain
    training step (the running statistics move once); no hook is added, inputs are not
    modified. The caller's autograd graph is kept: with ``pen(pre(images), labels)`` the
    logits and the penalty back-propagate into a trainable ``pre`` as through the
    composed model. Non-finite inputs and bad labels are refused, the BatchNorm
    statistics left as found.

    **Modes.** ``"auto"`` (the default) runs ``"double_backprop"`` where the model can be
    differentiated twice and ``"finite_difference"`` where it cannot; how it decides is
    in :mod:`captum_regularized.regularizers`, and ``pen.resolved_mode`` says which it
    took.

    ``"double_backprop"`` keeps ``g`` in the graph (``create_graph=True``) so
    ``penalty.backward()`` trains the parameters through it: exact, one forward pass,
    about 1.8x a plain step's memory. Its forward pass runs with PyTorch's math
    attention kernel (``sdpa_kernel([SDPBackend.MATH])``), since the fused attention
    kernels (e.g. torchvision's ``VisionTransformer`` on CPU) have no double backward;
    a model part that has none either (a custom ``autograd.Function`` with a
    ``@once_differentiable`` backward, an operator without a second derivative) is
    named in a ``RuntimeError`` (a ``DoubleBackwardUnavailable``), and
    ``torch.compile``'d models are refused.

    ``"finite_difference"`` needs first derivatives only (compiled models, custom
    functions, fused attention kernels all work). With ``v = dR/dg`` computed from the
    detached ``g``, the penalty's weight gradient ``(dg/dtheta)^T v`` is the forward
    difference ``[grad_theta L(x + h v) - grad_theta L(x)] / h`` of the summed loss
    ``L``: one first-order pass for ``g``, one at ``x + h v`` whose weight gradient is
    kept, and the caller's forward pass at ``x``, whose own backward pass subtracts the
    second term. The returned penalty has the exact value; its gradient is the
    estimate (error ``O(h)`` plus rounding ``O(eps / h)``). The step ``h`` is chosen per
    batch so that no example moves by more than ``fd_step`` times its own norm (default
    ``0.02``, ``sqrt(eps)`` under half-precision autocast: ``0.031`` for float16), one
    ``h`` for the batch so that BatchNorm's coupling stays exact. Forward
    rather than central differences: the caller's pass provides ``L(x)`` for free, so a
    step costs one extra forward and backward pass instead of two, and only one
    forward graph is alive at a time, plus the kept weight gradient, which autograd
    accumulates into in place (resnet18 at batch 16, 64x64: 1.35x a plain step's peak
    memory, against 1.81x for the exact mode). All passes draw the same
    dropout masks, and the extra passes leave the BatchNorm statistics and the random
    state as one forward pass does. With inputs from the caller's trainable modules the
    same difference (of ``grad_x L``) trains them too. On a ReLU network ``g`` is
    piecewise constant in ``x`` apart from the softmax, and the ReLUs that switch between
    ``x`` and ``x + h v`` make the difference quotient a smoothed gradient rather than
    the exact one, which ignores them (on a small ReLU CNN their cosine is about 0.3;
    on smooth networks the two agree to about 1 % at the default step).

    Parameters
    ----------
    model : nn.Module
        The classifier being trained (may be ``DistributedDataParallel``-wrapped).
    norm : {"l1", "elastic_net", "group", "gaze"}
        The structure to encourage.
    epsilon : float
        Weight ``eps`` (``eps1`` of the elastic net), finite and ``>= 0``. The default
        ``3e-3`` is for inputs in ``[0, 1]`` at 32x32 (see Notes, "Choosing epsilon"):
        ``0.01`` already costs accuracy on a narrower model and ``0.03`` a lot.
    epsilon2 : float
        The elastic net's ``eps2 > 0`` (finite); must be 0 for the other norms.
    group_size : int
        Patch side for ``"group"``.
    mode : {"auto", "double_backprop", "finite_difference"}
        How the penalty's weight gradient is computed (see above); ``"auto"`` picks the
        exact mode where the model allows it.
    fd_step : float, optional
        ``mode="finite_difference"`` (or ``"auto"`` when it falls back) only: the
        relative step ``tau`` in ``(0, 1)``; ``None`` for ``max(0.02, sqrt(eps))`` of
        the compute dtype.
    grad_scaler : torch.amp.GradScaler, optional
        For mixed precision with loss scaling, PyTorch's gradient-penalty recipe: the
        loss is multiplied by the scaler's factor before the input gradient (and, in
        the finite-difference mode, the weight gradient at ``x + h v``) is taken, and
        the gradients divided by it before the penalty, so half-precision gradients do
        not underflow. Pass the scaler that scales the training loss; the caller then
        calls ``scaler.scale(loss).backward()`` as usual. In the finite-difference
        mode the weight gradient at ``x`` is then taken in one more first-order pass
        too, and ``1/h`` multiplies only the difference of the two, in the parameters'
        precision: the backward pass through the logits carries the training loss
        alone, so the scaler finds no overflow a plain step would not (instead of a
        term ``1/h`` larger that would make it settle ``h`` times lower). A disabled
        scaler is no scaler.

    Notes
    -----
    **Choosing epsilon.** Unlike the guided regularizer's distance, the penalty has
    the units of the input gradient: ``R*`` sums ``|dCE/dx|`` over all ``C x H x W``
    input values, and the gradient grows as the model fits the data, so a value that
    is harmless at the start can dominate later. Scale: with inputs ``x' = s x``
    (pixels in ``[0, 255]``: ``s = 255``; standardised inputs ``(x - mu) / sigma``:
    ``s = 1 / sigma``, about 4.4 with ImageNet's statistics) the gradient is ``s``
    times smaller, so the same strength takes ``epsilon`` ``s`` times larger. Another
    image size or architecture changes ``||g||_1`` too: start a factor of 3 or 10
    below the table's values and raise ``epsilon`` while the held-out accuracy holds,
    watching :func:`~captum_regularized.metrics.gini_sparseness` of the plain gradient
    maps (or the penalty's share of the loss: at ``3e-3`` on the reference model it is
    about 2 % of the cross-entropy at initialisation, where ``||g||_1`` is about 17,
    and it grows as the model trains). The accuracy falls off a cliff rather than
    gently: measured ``"l1"`` on the reference model,
    :class:`~captum_regularized.models.SimpleCNN` (default width 16, and width 8),
    trained by :func:`~captum_regularized.models.train_classifier` (AdamW, lr
    ``3e-3``, batch 64, 10 epochs = 320 steps, ``mode="double_backprop"``) on
    ``SyntheticShapes(num_samples=2000, image_size=32, seed=0)`` (inputs in
    ``[0, 1]``), evaluated on 512 held-out images (``seed=1``) in eval mode; Gini =
    mean :func:`~captum_regularized.metrics.gini_sparseness` of the label logit's
    plain input gradient:

    ==============  ====================  ====================
    epsilon         width 16: acc / Gini  width 8: acc / Gini
    ==============  ====================  ====================
    0 (no penalty)  100.0 % / 0.64        99.4 % / 0.66
    1e-3            100.0 % / 0.68        99.2 % / 0.72
    3e-3 (default)  100.0 % / 0.72        99.2 % / 0.76
    1e-2            99.8 % / 0.75         96.7 % / 0.76
    3e-2            83.2 % / 0.76         54.7 % / 0.76
    ==============  ====================  ====================

    (one seed each). ``3e-3`` gives most of the sparsity at no measured cost;
    ``1e-2``, the former default, costs accuracy on the narrower model and ``3e-2``
    a lot on both.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(num_classes=3, width=4)
    >>> pen = GradientNormPenalty(model, norm="group", epsilon=0.1, group_size=4)
    >>> logits, penalty = pen(torch.rand(2, 3, 16, 16), torch.tensor([0, 2]))
    >>> logits.shape, penalty.shape, penalty.requires_grad
    (torch.Size([2, 3]), torch.Size([]), True)
    >>> fd = GradientNormPenalty(model, norm="group", epsilon=0.1, group_size=4,
    ...                          mode="finite_difference")
    >>> _, estimate = fd(torch.rand(2, 3, 16, 16), torch.tensor([0, 2]))
    >>> estimate.requires_grad
    True
    """

    def __init__(
        self,
        model: nn.Module,
        norm: str = "l1",
        epsilon: float = 3e-3,
        epsilon2: float = 0.0,
        group_size: int = 14,
        *,
        mode: str = "auto",
        fd_step: float | None = None,
        grad_scaler: GradientScaler | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.spec = adversarial_norm(norm, epsilon, epsilon2, group_size)
        super().__init__(model, mode, fd_step, grad_scaler)

    @property
    def norm(self) -> str:
        """The chosen norm."""
        return self.spec.norm

    def __call__(
        self, inputs: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, penalty)``: the model output and the batch mean of ``R*(g_i)``.

        Parameters
        ----------
        inputs : Tensor
            Batch ``(B, ...)``, finite; ``(B, C, H, W)`` for ``"group"``.
        labels : Tensor
            Class indices ``(B,)`` in ``[0, C - 1]`` (``-100``, cross-entropy's
            ``ignore_index``, is refused: drop those examples instead).
        mask : Tensor, optional
            Required for ``"gaze"`` (values in ``[0, 1]``), rejected otherwise.

        Returns
        -------
        tuple of Tensor
            The logits ``(B, C)`` (the ``.logits`` tensor, for a model returning a
            Hugging Face ``ModelOutput`` or a dict with key ``"logits"``) and the
            penalty (0-d), both with their graph down to the caller's.

        Raises
        ------
        RuntimeError, TypeError, ValueError
            The errors of both penalties (listed in :mod:`captum_regularized.regularizers`);
            a ``ValueError`` for a missing, superfluous or bad ``mask``, too.
        """
        with self._training_call(inputs, labels) as scale:
            batch = _Batch(inputs, labels, self.spec.check_mask(mask, inputs), scale)
            return self._in_resolved_mode(
                lambda: self._double_backprop(batch),
                lambda: self._finite_difference(batch),
                inputs.device,
            )

    def _loss_fn(self, scale: torch.Tensor | None):  # type: ignore[no-untyped-def]
        if scale is None:
            return cross_entropy_per_example

        def scaled(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return cross_entropy_per_example(logits, labels).to(torch.float32) * scale

        return scaled

    def _double_backprop(self, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels, mask, scale = batch
        with self._double_backward_pass():
            out = input_gradient(
                self.model, inputs, labels, self._loss_fn(scale), create_graph=True
            )
        self._check_double_backward_once(out.logits, out.gradient)
        gradient = out.gradient if scale is None else out.gradient / scale
        return out.logits, self.spec.conjugate_penalty(gradient, mask).mean()

    def _finite_difference(self, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels, mask, scale = batch
        model = self.model
        extra = unwrap_parallel(model)  # the extra passes do not synchronise
        with self._gradient_pass(inputs.device):
            first = input_gradient(extra, inputs, labels, self._loss_fn(scale))
        gradient = first.gradient if scale is None else first.gradient / scale
        value, direction = penalty_and_direction(
            lambda leaf: self.spec.conjugate_penalty(leaf, mask).mean(), gradient
        )

        if self.spec.epsilon == 0 and self.spec.epsilon2 == 0:  # no penalty, no gradient
            with torch.enable_grad():
                logits = logits_of(model(inputs), "model")
                losses = cross_entropy_per_example(logits, labels)
            return logits, without_penalty_gradient(value, losses.sum())

        step = self._finite_difference_step(inputs, direction)

        def loss_at(x: torch.Tensor) -> torch.Tensor:
            return cross_entropy_per_example(logits_of(extra(x), "model"), labels).sum()

        perturbed = self._perturbed_pass(loss_at, inputs, direction, step, scale=scale)
        with torch.enable_grad():
            logits = logits_of(model(inputs), "model")
            losses = cross_entropy_per_example(logits, labels)
        reference = None if perturbed.differences else losses.sum()  # L(x) subtracted already
        return logits, finite_difference_penalty(value, reference, perturbed, inputs)
