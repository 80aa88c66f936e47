"""Positive, negative, active and inactive saliency (Llorente et al., arXiv 2309.12913).

Plain saliency shows ``|dS_t/dx|`` and so mixes pixels that raise the target score with
pixels that lower it. The paper splits the gradient by its *sign* (positive / negative)
and by its *attitude* towards the other classes. With ``g_c = dS_c/dx`` the input
gradient of class ``c`` and ``t`` the target class:

* positive ``P = relu(g_t)``, negative ``N = relu(-g_t)``: the pixels whose increase
  raises (lowers) the target score;
* active ``A = g_t`` where ``g_t > g_c`` for **every** compared ``c != t`` (strict), else 0:
  increasing the pixel raises the target score faster than any other class's score;
* inactive ``I = g_t`` where ``g_t < g_c`` for every compared ``c != t`` (strict), else 0:
  increasing it raises every other class faster than the target.

The condition "for every compared class" is vacuously true for an example that has no
compared class (a ``compare_classes`` list holding only its target): its active and
inactive maps are then ``g_t`` itself. The functions ``*_part`` below turn gradients into
one map each; the four classes and :func:`signed_saliency_maps` (all maps from one pass)
share them, so there is one formula per map.

All four classes return attributions of the input's shape (tuple in, tuple out), so
``NoiseTunnel``, ``captum.attr.visualization`` and ``captum.metrics`` take them as they
take ``Saliency``. Use :func:`~captum_regularized.attr.reduce_channels` and
:func:`~captum_regularized.attr.normalize_per_example` to get the paper's per-pixel maps.

**The class-gradient engine** (:func:`class_gradients`, bottom of this file). Active and
inactive maps need ``dS_c/dx`` for many classes ``c``; storing all of them costs
``num_classes x input`` memory, and the engine never does. It runs the model once, then
back-propagates class *chunks* of the output and folds every chunk into running
reductions (the target's gradient, the element-wise maximum and minimum over the
compared classes), so the live gradient memory is ``class_chunk_size x input``. A chunk
is back-propagated either

* ``"vmap"``: in one batched backward pass (``torch.autograd.grad(...,
  is_grads_batched=True)``), fast on GPUs; or
* ``"loop"``: one backward pass per class, reusing the graph (``retain_graph=True``)
  and folding each gradient in at once (live gradient memory ``1 x input``); this is
  the arithmetic lower bound on CPUs.

``"auto"`` picks ``"vmap"`` on CUDA and ``"loop"`` elsewhere (measured: on CPUs the
batched backward is no faster and holds more memory). Whenever ``"vmap"`` fails (an
operator of the model without a batching rule, an in-place op it rejects), the engine
falls back to the loop for the rest of the call. Every row of the chunk table selects
one class *per example* (rows may select different classes for different examples, as
the top-k comparison needs); each example's gradient only depends on its own logit as
long as the model treats the examples of a batch independently (eval-mode BatchNorm,
no cross-example ops). A ``torch.compile``'d model's backward may run only once per
forward graph, so there every row gets its own forward pass (``"loop"``, one forward
and one backward pass per class). Positive and negative maps need only the target's gradient
(:func:`~captum_regularized._internal.targets.target_gradients`, one backward pass).
A call that will run many backward passes (more than
:data:`~captum_regularized._internal.user_feedback.PROGRESS_THRESHOLD`, e.g. the loop
over 1000 ImageNet classes) shows a progress bar on a terminal (``progress=``).

The model is left as found: the forward pass runs in its own train/eval mode (a
training BatchNorm normalises with the batch's statistics), and its modes,
``requires_grad`` flags and BatchNorm running statistics are written back afterwards
(also when ``NoiseTunnel`` calls ``attribute`` once per noisy sample).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, overload

import torch
from captum.attr import GradientAttribution

from captum_regularized._internal.captum_compat import (
    AttributionCall,
    TargetType,
    TensorOrTuple,
    WithoutFutures,
    attribution_call,
    log_usage,
    run_forward,
)
from captum_regularized._internal.checks import check_attribution_inputs
from captum_regularized._internal.input_gradients import fresh_leaf
from captum_regularized._internal.model_state import (
    find_module,
    is_compiled,
    kept_batchnorm_statistics,
    preserved_model,
)
from captum_regularized._internal.target_gradient_attribution import TargetGradientAttribution
from captum_regularized._internal.targets import class_indices, target_gradients
from captum_regularized._internal.user_feedback import (
    check_progress,
    progress_bar,
    show_progress,
    warn_if_training,
)

__all__ = [
    "ActiveSaliency",
    "InactiveSaliency",
    "NegativeSaliency",
    "PositiveSaliency",
    "signed_saliency_maps",
]

MAP_NAMES = ("gradient", "positive", "negative", "active", "inactive")
"""The keys of :func:`signed_saliency_maps`."""

DEFAULT_CLASS_CHUNK_SIZE = 32
"""Classes back-propagated together when ``class_chunk_size=None``."""

STRATEGIES = ("auto", "vmap", "loop")
"""How the engine back-propagates a chunk of classes (see the module docstring)."""

CompareClasses = int | torch.Tensor | None


# ------------------------------------------------------------------ the formulas


class ClassGradients(NamedTuple):
    """What :func:`class_gradients` returns, one tensor per input (shapes of the inputs).

    Attributes
    ----------
    target : tuple of Tensor
        ``dS_t/dx``, the gradient of each example's target class.
    max_other : tuple of Tensor
        Element-wise maximum of ``dS_c/dx`` over the compared classes ``c != t``
        (``-inf`` where an example has no compared class).
    min_other : tuple of Tensor
        Element-wise minimum over the same classes (``+inf`` where there are none).
    """

    target: tuple[torch.Tensor, ...]
    max_other: tuple[torch.Tensor, ...]
    min_other: tuple[torch.Tensor, ...]


def positive_part(gradients: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """``relu(g_t)`` for each input.

    Examples
    --------
    >>> positive_part((torch.tensor([-1.0, 2.0]),))[0].tolist()
    [0.0, 2.0]
    """
    return tuple(torch.relu(g) for g in gradients)


def negative_part(gradients: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """``relu(-g_t)`` for each input (the magnitude of the negative gradients).

    Examples
    --------
    >>> negative_part((torch.tensor([-1.0, 2.0]),))[0].tolist()
    [1.0, 0.0]
    """
    return tuple(torch.relu(-g) for g in gradients)


def _keep_where(
    gradient: torch.Tensor, keep: torch.Tensor, abs: bool
) -> torch.Tensor:
    kept = torch.where(keep, gradient, torch.zeros_like(gradient))
    return kept.abs() if abs else kept


def active_part(
    grads: ClassGradients, abs: bool = True
) -> tuple[torch.Tensor, ...]:
    """``g_t`` where it is strictly above every compared class's gradient, else 0.

    Examples
    --------
    >>> g = ClassGradients((torch.tensor([-1.0, 2.0, 1.0]),), (torch.tensor([-2.0, 2.0, 3.0]),),
    ...                    (torch.tensor([-3.0, 0.0, 0.0]),))
    >>> active_part(g)[0].tolist(), active_part(g, abs=False)[0].tolist()
    ([1.0, 0.0, 0.0], [-1.0, 0.0, 0.0])
    """
    return tuple(
        _keep_where(g, g > high, abs) for g, high in zip(grads.target, grads.max_other)
    )


def inactive_part(
    grads: ClassGradients, abs: bool = True
) -> tuple[torch.Tensor, ...]:
    """``g_t`` where it is strictly below every compared class's gradient, else 0.

    Examples
    --------
    >>> g = ClassGradients((torch.tensor([-1.0, 0.0]),), (torch.tensor([0.0, 1.0]),),
    ...                    (torch.tensor([0.5, 0.0]),))
    >>> inactive_part(g, abs=False)[0].tolist()
    [-1.0, 0.0]
    """
    return tuple(
        _keep_where(g, g < low, abs) for g, low in zip(grads.target, grads.min_other)
    )


# ------------------------------------------------------------------ the classes


class _TargetSignSaliency(TargetGradientAttribution):
    """Maps that need only the target's gradient (one forward, one backward).

    ``attribute(inputs, target=None, additional_forward_args=None)`` is the shared one of
    :class:`~captum_regularized._internal.target_gradient_attribution.TargetGradientAttribution`;
    the maps are non-negative.
    """

    @staticmethod
    def _part(gradients: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The map of one subclass, from the target's gradients (set by each subclass)."""
        raise NotImplementedError

    def _maps(self, call: AttributionCall, target: TargetType) -> tuple[torch.Tensor, ...]:
        gradients = target_gradients(
            self.forward_func, call.inputs, target, call.additional_forward_args
        )
        return self._part(gradients)


class _ClassComparisonSaliency(WithoutFutures, GradientAttribution):
    """Maps that compare the target's gradient with every other class's gradient.

    Captum's defaults hold (``multiplies_by_inputs`` and ``has_convergence_delta`` are
    ``False``). :attr:`backward_strategy` chooses how the engine back-propagates the
    class chunks; the maps do not depend on it.
    """

    backward_strategy: str = "auto"
    """``"auto"`` (``"vmap"`` on CUDA, ``"loop"`` elsewhere), ``"vmap"`` or ``"loop"``."""

    @staticmethod
    def _part(
        grads: ClassGradients, abs: bool = True  # the paper's and Captum's Saliency name
    ) -> tuple[torch.Tensor, ...]:
        """The map of one subclass, from the class gradients (set by each subclass)."""
        raise NotImplementedError

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        abs: bool = True,
        additional_forward_args: Any = None,
        class_chunk_size: int | None = None,
        compare_classes: CompareClasses = None,
        progress: bool | None = None,
    ) -> TensorOrTuple:
        """Attribute ``inputs`` by comparing the target's gradient with the other classes'.

        The first four arguments are those of Captum's ``Saliency.attribute``, in its
        order (``abs`` third).

        Parameters
        ----------
        inputs : Tensor or tuple of Tensor
            Floating-point inputs, batch in dim 0.
        target : any Captum target form, optional
            ``None`` means each example's predicted class (argmax), as in the paper.
            The model must return ``(B, num_classes)`` scores with ``num_classes >= 2``.
            The comparison needs a class per example: a target callable (or a list of
            them) stands for its integer ``category`` attribute, as pytorch-grad-cam's
            ``ClassifierOutputTarget(k)`` has; one without it is a ``TypeError``.
        abs : bool
            Return ``|.|`` (default, as the authors do); ``False`` keeps the sign.
        additional_forward_args : optional
            Extra arguments passed to the model after the inputs.
        class_chunk_size : int, optional
            Classes back-propagated together (default 32): peak memory grows with
            ``class_chunk_size x input``, never with ``num_classes x input``.
        compare_classes : None, int or 1-D Tensor
            ``None``: every class ``c != t`` (exact). ``k``: only the ``k``
            highest-scoring other classes of each example, a cheaper approximation for
            models with many classes. A 1-D tensor: exactly those classes.
        progress : bool or None
            Show a ``tqdm`` progress bar with an ETA on stderr, counting the classes
            back-propagated. ``None`` (default): when the call runs more than 64
            backward passes (one per class with the ``"loop"`` strategy, one per
            ``class_chunk_size`` classes with ``"vmap"``) and stderr is a terminal;
            ``True``: always; ``False``: never. The maps do not depend on it.

        Returns
        -------
        Tensor or tuple of Tensor
            Maps with the form and shapes of ``inputs``; zero where the condition fails.

        Warns
        -----
        UserWarning
            When the model has BatchNorm or Dropout modules in train mode (call
            ``model.eval()`` first); once per call site under Python's default filter.

        Raises
        ------
        RuntimeError
            Inside ``torch.inference_mode()``, where no gradient can be taken.
        TypeError
            For non-floating inputs, an ``abs`` that is not a bool (extra forward
            arguments passed third, where Captum's ``Saliency`` takes ``abs``), or a
            ``class_chunk_size`` / ``compare_classes`` of the wrong type.
        ValueError
            For inputs with NaN/infinite values, without a shared batch size or on
            another device than the model; an output that is not ``(B, C >= 2)``; a
            target or compared class out of range; a size that is not positive.
        """
        if not isinstance(abs, bool):
            raise TypeError(
                f"abs must be a bool, got {type(abs).__name__}; it is the third argument, "
                "as in Captum's Saliency.attribute(inputs, target, abs, "
                "additional_forward_args): pass additional_forward_args by keyword"
            )
        if self.backward_strategy not in STRATEGIES:
            raise ValueError(
                f"backward_strategy must be one of {STRATEGIES}, got {self.backward_strategy!r}"
            )
        grads, call = _class_gradients_of(
            type(self).__name__,
            self.forward_func,
            inputs,
            target,
            additional_forward_args,
            class_chunk_size,
            compare_classes,
            self.backward_strategy,
            progress,
        )
        return call.output(self._part(grads, abs))


class PositiveSaliency(_TargetSignSaliency):
    """Positive gradients of the target score: ``relu(dS_t/dx)``.

    The pixels whose increase raises the target score. Unlike ``Saliency`` (which takes
    ``|.|``) the negative half is dropped, not folded in.

    Parameters
    ----------
    forward_func : callable
        The model, or any function of the inputs returning scores.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(num_classes=4, width=4).eval()
    >>> attr = PositiveSaliency(model).attribute(torch.rand(2, 3, 16, 16), target=1)
    >>> attr.shape, bool((attr >= 0).all())
    (torch.Size([2, 3, 16, 16]), True)
    """

    _part = staticmethod(positive_part)


class NegativeSaliency(_TargetSignSaliency):
    """Magnitude of the negative gradients of the target score: ``relu(-dS_t/dx)``.

    The pixels whose increase lowers the target score.

    Parameters
    ----------
    forward_func : callable
        The model, or any function of the inputs returning ``(B, C)`` scores (or one
        score per example, which is then the target score).

    Examples
    --------
    >>> model = torch.nn.Linear(3, 2)
    >>> attr = NegativeSaliency(model).attribute(torch.rand(1, 3), target=0)
    >>> torch.equal(attr[0], torch.relu(-model.weight[0]))
    True
    """

    _part = staticmethod(negative_part)


class ActiveSaliency(_ClassComparisonSaliency):
    """Target gradient where it beats the gradient of every other class (strictly).

    ``A = g_t`` where ``g_t > g_c`` for all ``c != t``, else 0, with ``g_c = dS_c/dx``.
    The class gradients come from one forward pass and batched backward passes over
    class chunks, with running maxima: memory does not grow with the number of classes.

    **Cost.** The exact map (``compare_classes=None``) needs the gradient of every
    class: one forward pass and ``num_classes`` backward passes (on CPUs one per class;
    on CUDA ``num_classes / class_chunk_size`` batched ones). For ImageNet's 1000 classes
    that is about 1000 times the cost of ``Saliency`` (161 s for one image on
    torchvision's resnet50 on 2 CPU cores); long calls show a progress bar
    (``progress=``).
    ``compare_classes=k`` compares the target only with the ``k`` highest-scoring other
    classes of each example: ``k + 1`` backward passes, so about ``num_classes / (k + 1)``
    times faster. It is an approximation that can only *add* pixels: the condition
    "above every compared class" is checked against fewer classes, so every pixel of the
    exact map stays (with the same value) and pixels where some low-scoring class's
    gradient is higher are kept too. :class:`InactiveSaliency` behaves alike. The README
    gives measured times and agreement with the exact map.

    Parameters
    ----------
    forward_func : callable
        The model, returning ``(batch, num_classes)`` scores.

    Attributes
    ----------
    backward_strategy : {"auto", "vmap", "loop"}
        How the class chunks are back-propagated (see the module notes); ``"auto"``
        (default) is ``"vmap"`` on CUDA and ``"loop"`` elsewhere. The maps do not
        depend on it.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(num_classes=4, width=4).eval()
    >>> x = torch.rand(2, 3, 16, 16)
    >>> attr = ActiveSaliency(model).attribute(x, class_chunk_size=2)
    >>> attr.shape
    torch.Size([2, 3, 16, 16])
    >>> signed = ActiveSaliency(model).attribute(x, abs=False)
    >>> torch.allclose(signed.abs(), attr)
    True
    """

    _part = staticmethod(active_part)


class InactiveSaliency(_ClassComparisonSaliency):
    """Target gradient where it is below the gradient of every other class (strictly).

    ``I = g_t`` where ``g_t < g_c`` for all ``c != t``, else 0: the pixels whose
    increase favours every other class over the target.

    Parameters
    ----------
    forward_func : callable
        The model, returning ``(batch, num_classes)`` scores.

    Examples
    --------
    >>> model = torch.nn.Linear(2, 3, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[-1.0, 0.0], [0.0, 1.0], [2.0, 1.0]]))
    >>> InactiveSaliency(model).attribute(torch.rand(1, 2), target=0, abs=False).tolist()
    [[-1.0, 0.0]]
    """

    _part = staticmethod(inactive_part)


@overload
def signed_saliency_maps(
    forward_func: Callable[..., Any],
    inputs: torch.Tensor,
    target: TargetType = ...,
    additional_forward_args: Any = ...,
    abs: bool = ...,
    class_chunk_size: int | None = ...,
    compare_classes: CompareClasses = ...,
    progress: bool | None = ...,
) -> dict[str, torch.Tensor]: ...


@overload
def signed_saliency_maps(
    forward_func: Callable[..., Any],
    inputs: tuple[torch.Tensor, ...],
    target: TargetType = ...,
    additional_forward_args: Any = ...,
    abs: bool = ...,
    class_chunk_size: int | None = ...,
    compare_classes: CompareClasses = ...,
    progress: bool | None = ...,
) -> dict[str, tuple[torch.Tensor, ...]]: ...


def signed_saliency_maps(
    forward_func: Callable[..., Any],
    inputs: TensorOrTuple,
    target: TargetType = None,
    additional_forward_args: Any = None,
    abs: bool = True,
    class_chunk_size: int | None = None,
    compare_classes: CompareClasses = None,
    progress: bool | None = None,
) -> dict[str, Any]:  # precise per input form in the overloads above
    """All four signed maps and the plain gradient from one pass over the class gradients.

    Equivalent to calling :class:`PositiveSaliency`, :class:`NegativeSaliency`,
    :class:`ActiveSaliency`, :class:`InactiveSaliency` (and Captum's signed
    ``Saliency(abs=False)``) on the same inputs, but the model runs forward once and the
    per-class gradients are computed once.

    Parameters
    ----------
    forward_func : callable
        Model returning ``(B, num_classes)`` scores (a tensor, a Hugging Face
        ``ModelOutput`` or a dict with key ``"logits"``).
    inputs : Tensor or tuple of Tensor
        Floating-point inputs, batch in dim 0.
    target : any Captum target form, optional
        ``None`` means each example's predicted class (argmax), as in the paper. A
        target callable stands for its integer ``category`` attribute (as in
        ``ActiveSaliency.attribute``).
    additional_forward_args : optional
        Extra arguments passed to ``forward_func`` after the inputs.
    abs : bool
        Return ``|.|`` of the active and inactive maps (the authors' choice); ``False``
        keeps their sign.
    class_chunk_size : int, optional
        Classes back-propagated together; bounds memory to ``class_chunk_size x input``.
    compare_classes : None, int or 1-D Tensor
        ``None`` compares with every other class (exact); ``k`` with the ``k``
        highest-scoring other classes (an approximation for many classes); a tensor
        with the listed classes.
    progress : bool or None
        Show a ``tqdm`` progress bar with an ETA on stderr. ``None`` (default): when the
        call runs more than 64 backward passes and stderr is a terminal; ``True``:
        always; ``False``: never (see ``ActiveSaliency.attribute``).

    Returns
    -------
    dict
        Keys ``"gradient"`` (signed ``g_t``), ``"positive"``, ``"negative"``,
        ``"active"``, ``"inactive"``; each value has the form and shapes of ``inputs``
        (a tensor for a tensor, a tuple for a tuple). They are computed in the model's
        own train/eval mode; the model's modes, ``requires_grad`` flags and BatchNorm
        running statistics are left as found.

    Raises
    ------
    RuntimeError
        Inside ``torch.inference_mode()``, where no gradient can be taken.
    TypeError
        For non-floating inputs, or a ``class_chunk_size`` / ``compare_classes`` of the
        wrong type.
    ValueError
        For inputs with NaN/infinite values, without a shared batch size or on another
        device than the model; an output that is not ``(B, C >= 2)``; a target or
        compared class out of range; a size that is not positive.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(num_classes=4, width=4).eval()
    >>> maps = signed_saliency_maps(model, torch.rand(2, 3, 16, 16))
    >>> sorted(maps), maps["active"].shape
    (['active', 'gradient', 'inactive', 'negative', 'positive'], torch.Size([2, 3, 16, 16]))
    """
    grads, call = _class_gradients_of(
        "signed_saliency_maps",
        forward_func,
        inputs,
        target,
        additional_forward_args,
        class_chunk_size,
        compare_classes,
        progress=progress,
    )
    parts = {
        "gradient": grads.target,
        "positive": positive_part(grads.target),
        "negative": negative_part(grads.target),
        "active": active_part(grads, abs),
        "inactive": inactive_part(grads, abs),
    }
    return {name: call.output(parts[name]) for name in MAP_NAMES}


# ------------------------------------------------------------------ the engine


def _class_table(
    output: torch.Tensor,
    targets: torch.Tensor,
    compare_classes: CompareClasses,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of per-example classes to back-propagate, and what each row is for.

    Returns ``(classes, is_target, is_compared)``, each of shape ``(rows, B)``.
    """
    batch, num_classes = output.shape
    device = output.device
    if compare_classes is None:
        classes = torch.arange(num_classes, device=device)[:, None].expand(num_classes, batch)
        is_target = classes == targets[None]
        return classes, is_target, ~is_target
    if isinstance(compare_classes, bool) or not isinstance(compare_classes, (int, torch.Tensor)):
        raise TypeError(
            "compare_classes must be None, an int (top-k other classes) or a 1-D tensor of "
            f"class indices, got {type(compare_classes).__name__}"
        )
    if isinstance(compare_classes, int):
        if compare_classes < 1:
            raise ValueError(f"compare_classes must be a positive int, got {compare_classes}")
        k = min(compare_classes, num_classes - 1)
        scores = output.detach().scatter(1, targets[:, None], float("-inf"))
        others = scores.topk(k, dim=1).indices.T
    else:
        if compare_classes.is_floating_point() or compare_classes.is_complex():
            raise TypeError(f"compare_classes must hold integers, got {compare_classes.dtype}")
        if compare_classes.dim() != 1 or compare_classes.numel() == 0:
            raise ValueError(
                "compare_classes must be a non-empty 1-D tensor of class indices, got shape "
                f"{tuple(compare_classes.shape)}"
            )
        listed = compare_classes.to(device=device, dtype=torch.long)
        low, high = int(listed.min()), int(listed.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"compare_classes must hold class indices in [0, {num_classes - 1}], "
                f"got {low if low < 0 else high}"
            )
        others = listed[:, None].expand(listed.numel(), batch)
    classes = torch.cat([targets[None], others])
    is_target = torch.zeros_like(classes, dtype=torch.bool)
    is_target[0] = True
    return classes, is_target, classes != targets[None]


def _batched_chunk_gradients(
    output: torch.Tensor,
    leaves: tuple[torch.Tensor, ...],
    classes: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """``(rows, *input.shape)`` gradients of the per-example classes in ``classes``, from
    one batched (vmapped) backward pass."""
    rows = classes.shape[0]
    one_hot = torch.zeros((rows, *output.shape), dtype=output.dtype, device=output.device)
    one_hot.scatter_(2, classes[:, :, None], 1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(batching rule|is_grads_batched).*")
        grads = torch.autograd.grad(
            output, leaves, one_hot, retain_graph=True, is_grads_batched=True,
            allow_unused=True,
        )
    return tuple(
        g if g is not None else leaf.new_zeros((rows, *leaf.shape))
        for g, leaf in zip(grads, leaves)
    )


def _rows_mask(keep: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a ``(rows, B)`` mask over a ``(rows, B, ...)`` chunk."""
    return keep.reshape(*keep.shape, *([1] * (like.dim() - 2)))


def _masked_extreme(chunk: torch.Tensor, keep: torch.Tensor, largest: bool) -> torch.Tensor:
    """Max (or min) over the rows of ``chunk`` where ``keep`` holds; +-inf where none does."""
    fill = torch.full((), float("-inf") if largest else float("inf"), dtype=chunk.dtype,
                      device=chunk.device)
    masked = torch.where(_rows_mask(keep, chunk), chunk, fill)
    return masked.amax(0) if largest else masked.amin(0)


def _fold_row(
    output: torch.Tensor,
    leaves: tuple[torch.Tensor, ...],
    classes: torch.Tensor,
    is_target: torch.Tensor,
    is_compared: torch.Tensor,
    target_grad: list[torch.Tensor],
    highest: list[torch.Tensor],
    lowest: list[torch.Tensor],
    retain_graph: bool = True,
) -> None:
    """One backward pass for one class per example, folded into the running results.

    Every example's target occupies exactly one row of the class table, so its gradient
    is taken where that row comes, not summed.
    """
    one_hot = torch.zeros_like(output).scatter_(1, classes[:, None], 1)
    grads = torch.autograd.grad(
        output, leaves, one_hot, retain_graph=retain_graph, allow_unused=True
    )
    for i, (grad, leaf) in enumerate(zip(grads, leaves)):
        grad = torch.zeros_like(leaf) if grad is None else grad
        shape = (-1,) + (1,) * (grad.dim() - 1)
        own, compared = is_target.view(shape), is_compared.view(shape)
        target_grad[i] = torch.where(own, grad, target_grad[i])
        highest[i] = torch.where(compared, torch.maximum(highest[i], grad), highest[i])
        lowest[i] = torch.where(compared, torch.minimum(lowest[i], grad), lowest[i])


def class_gradients(
    forward_func: Callable[..., Any],
    inputs: tuple[torch.Tensor, ...],
    target: TargetType = None,
    additional_forward_args: tuple[Any, ...] | None = None,
    class_chunk_size: int | None = None,
    compare_classes: CompareClasses = None,
    strategy: str = "auto",
    progress: bool | None = False,
    label: str = "class gradients",
) -> ClassGradients:
    """Target gradient plus element-wise max/min of the other classes' gradients.

    Parameters
    ----------
    forward_func : callable
        Model (or function) returning ``(B, C)`` scores.
    inputs : tuple of Tensor
        Floating-point inputs sharing the batch dim 0.
    target : any Captum target form
        The class ``t`` of each example; ``None`` means the predicted class.
    additional_forward_args : tuple, optional
        Extra arguments of ``forward_func`` after the inputs.
    class_chunk_size : int, optional
        Classes back-propagated together by the ``"vmap"`` strategy (memory
        ``class_chunk_size x input``); ``None`` means :data:`DEFAULT_CLASS_CHUNK_SIZE`.
        The ``"loop"`` strategy always holds one class gradient at a time.
    compare_classes : None, int or 1-D Tensor
        ``None``: every class ``c != t`` (exact). ``k``: the ``k`` highest-scoring
        classes other than ``t`` per example (an approximation). A tensor: those classes
        (``t`` itself is skipped where listed).
    strategy : {"auto", "vmap", "loop"}
        How a chunk is back-propagated (see the module docstring); ``"vmap"`` falls
        back to ``"loop"`` where the batched backward fails.
    progress : bool or None
        A progress bar over the classes (``None``: when more than
        :data:`~captum_regularized._internal.user_feedback.PROGRESS_THRESHOLD` backward
        passes run and stderr is a terminal); off by default here.
    label : str
        The bar's label.

    Returns
    -------
    ClassGradients
        Computed in the model's own train/eval mode; BatchNorm running statistics,
        modes and ``requires_grad`` flags are as before the call.

    Raises
    ------
    ValueError
        When the output is not ``(B, C)`` with ``C >= 2``, a target or compared class is
        out of range, or a size is not positive.

    Examples
    --------
    >>> model = torch.nn.Linear(2, 3, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, -1.0]]))
    >>> grads = class_gradients(model, (torch.rand(1, 2),), target=0)
    >>> grads.target[0].tolist(), grads.max_other[0].tolist(), grads.min_other[0].tolist()
    ([[1.0, 0.0]], [[2.0, 1.0]], [[0.0, -1.0]])
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if class_chunk_size is None:
        class_chunk_size = DEFAULT_CLASS_CHUNK_SIZE
    if isinstance(class_chunk_size, bool) or not isinstance(class_chunk_size, int):
        raise TypeError(f"class_chunk_size must be an int or None, got {class_chunk_size!r}")
    if class_chunk_size < 1:
        raise ValueError(f"class_chunk_size must be a positive int, got {class_chunk_size}")
    check_progress(progress)
    module = find_module(forward_func)
    check_attribution_inputs(inputs, module)
    with preserved_model(module), kept_batchnorm_statistics(module), torch.enable_grad():
        leaves = tuple(fresh_leaf(x) for x in inputs)  # inputs stay untouched
        output = run_forward(forward_func, leaves, additional_forward_args)
        if output.dim() != 2 or output.shape[1] < 2:
            raise ValueError(
                "comparing class gradients needs a model output of shape (batch, classes) "
                f"with at least 2 classes; got shape {tuple(output.shape)}"
            )
        targets = class_indices(output, target)
        classes, is_target, is_compared = _class_table(output, targets, compare_classes)
        # A compiled backward may run once per graph (AOT autograd donates its saved
        # buffers): there, every row after the first gets its own forward pass.
        graph_per_row = is_compiled(module)
        use_vmap = not graph_per_row and (
            strategy == "vmap" or (strategy == "auto" and output.device.type == "cuda")
        )
        target_grad = [torch.zeros_like(x) for x in leaves]
        highest = [torch.full_like(x, float("-inf")) for x in leaves]
        lowest = [torch.full_like(x, float("inf")) for x in leaves]
        total = classes.shape[0]  # known from the shape: no host synchronisation
        passes = math.ceil(total / class_chunk_size) if use_vmap else total
        start = 0
        with progress_bar(show_progress(progress, passes), total, label, "class") as bar:
            while start < total:
                if not use_vmap:  # the loop gains nothing from stacking rows: one at a time
                    if graph_per_row and start > 0:
                        output = run_forward(forward_func, leaves, additional_forward_args)
                    _fold_row(output, leaves, classes[start], is_target[start],
                              is_compared[start], target_grad, highest, lowest,
                              retain_graph=not graph_per_row)
                    start += 1
                    bar.update(1)
                    continue
                rows = slice(start, start + class_chunk_size)
                try:
                    chunk = _batched_chunk_gradients(output, leaves, classes[rows])
                except (RuntimeError, NotImplementedError):
                    use_vmap = False  # an operator without a batching rule: loop from here
                    continue
                for i, grads in enumerate(chunk):
                    own = torch.where(_rows_mask(is_target[rows], grads), grads, 0).sum(0)
                    target_grad[i] = target_grad[i] + own
                    compared = is_compared[rows]
                    highest[i] = torch.maximum(highest[i], _masked_extreme(grads, compared, True))
                    lowest[i] = torch.minimum(lowest[i], _masked_extreme(grads, compared, False))
                bar.update(min(rows.stop, total) - start)
                start = rows.stop
    return ClassGradients(tuple(target_grad), tuple(highest), tuple(lowest))


def _class_gradients_of(
    who: str,
    forward_func: Callable[..., Any],
    inputs: TensorOrTuple,
    target: TargetType,
    additional_forward_args: Any,
    class_chunk_size: int | None,
    compare_classes: CompareClasses,
    strategy: str = "auto",
    progress: bool | None = None,
) -> tuple[ClassGradients, AttributionCall]:
    """The engine behind a public entry point, on Captum's input forms.

    Returns the class gradients and the formatted call (whose ``output`` gives maps
    back in the form of ``inputs``). Warns about a train-mode model first.
    """
    call = attribution_call(who, inputs, additional_forward_args)
    check_progress(progress)
    warn_if_training(forward_func, who)
    grads = class_gradients(
        forward_func,
        call.inputs,
        target,
        call.additional_forward_args,
        class_chunk_size=class_chunk_size,
        compare_classes=compare_classes,
        strategy=strategy,
        progress=progress,
        label=who,
    )
    return grads, call
