"""The package's metrics as ``torchmetrics.Metric`` objects, ready for DDP and Lightning.

Every class wraps one batched function of :mod:`captum_regularized.metrics`:
``update`` adds the function's per-example values of a batch to two states, their sum
and their number (``dist_reduce_fx="sum"``), and ``compute`` returns

.. math::

    \\bar v = \\frac{\\sum_{\\text{batches}} \\sum_b v_b}{\\sum_{\\text{batches}} B},

the function's ``.mean()`` over all the examples seen, on every process. The model
(held, not registered) and the function's settings, checked as the function checks
them, are given at construction. Needs torchmetrics (the ``lightning`` extra). State
names, compute groups and devices: :doc:`/design_notes/metrics`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, cast

import torch

from captum_regularized._internal.captum_compat import TargetType
from captum_regularized._internal.extras import optional_extra
from captum_regularized._internal.guided_relu import check_guided_model, check_guided_rule
from captum_regularized.metrics._perturbation import check_map_settings
from captum_regularized.metrics.allegiance import (
    ALLEGIANCE_FRACTIONS,
    allegiance_deletion_auc,
    check_allegiance_settings,
)
from captum_regularized.metrics.confidence_change import (
    average_drop,
    average_gain,
    increase_in_confidence,
)
from captum_regularized.metrics.deletion_insertion import (
    Substrate,
    check_curve_settings,
    deletion_auc,
    insertion_auc,
)
from captum_regularized.metrics.gradient_alignment import gradient_alignment
from captum_regularized.metrics.pointing_game import energy_pointing_game, pointing_game
from captum_regularized.metrics.road import ROAD_PERCENTILES, check_road_settings, road
from captum_regularized.metrics.sparseness import gini_sparseness

with optional_extra(__name__, "torchmetrics"):
    from torchmetrics import Metric

__all__ = [
    "AllegianceDeletionAUC",
    "AverageDrop",
    "AverageGain",
    "DeletionAUC",
    "EnergyPointingGame",
    "GiniSparseness",
    "GradientAlignment",
    "IncreaseInConfidence",
    "InsertionAUC",
    "PointingGame",
    "ROADCombined",
]


class _SharedReference:
    """Holds the model without registering it, and without copying it in ``deepcopy``."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __deepcopy__(self, memo: dict[int, Any]) -> _SharedReference:
        return self


class _PerExampleMean(Metric):
    """Mean of per-example values; states ``total`` and ``count`` (names: :attr:`state_names`)."""

    is_differentiable: bool | None = False
    full_state_update: bool | None = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        key = uuid.uuid4().hex[:12]  # not from the random generators: their state is left as is
        self.state_names: dict[str, str] = {name: f"{name}_{key}" for name in ("total", "count")}
        self.add_state(self.state_names["total"], default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state(self.state_names["count"], default=torch.tensor(0), dist_reduce_fx="sum")

    @property
    def total(self) -> torch.Tensor:
        """The sum of the per-example values seen (the state ``total``)."""
        return getattr(self, self.state_names["total"])  # type: ignore[no-any-return]

    @property
    def count(self) -> torch.Tensor:
        """The number of examples seen (the state ``count``)."""
        return getattr(self, self.state_names["count"])  # type: ignore[no-any-return]

    @property
    def metric_state(self) -> dict[str, list[torch.Tensor] | torch.Tensor]:
        """``{"total": ..., "count": ...}``: the current states under their plain names."""
        return {"total": self.total, "count": self.count}

    def _add(self, values: torch.Tensor) -> None:
        values = values.detach().reshape(-1)
        self.total.add_(values.to(self.total).sum())
        self.count.add_(values.numel())

    def compute(self) -> torch.Tensor:
        """The mean of the per-example values over all the examples seen."""
        if int(self.count) == 0:
            raise ValueError(
                f"{type(self).__name__} has seen no examples; update it with a non-empty "
                "batch before compute()"
            )
        return self.total / self.count

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Add the states of another metric of this class, or a ``{"total", "count"}`` dict."""
        if isinstance(incoming_state, type(self)):
            incoming_state = incoming_state.metric_state
        if isinstance(incoming_state, dict):
            incoming_state = {self.state_names.get(k, k): v for k, v in incoming_state.items()}
        super().merge_state(incoming_state)

    def state_dict(  # type: ignore[override]
        self, destination: dict[str, Any] | None = None, prefix: str = "", keep_vars: bool = False
    ) -> dict[str, Any]:
        """As ``torchmetrics.Metric.state_dict``, with the states under their plain names."""
        saved = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        for plain, own in self.state_names.items():
            if prefix + own in saved:
                saved[prefix + plain] = saved.pop(prefix + own)
        return saved

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        for plain, own in self.state_names.items():
            if prefix + plain in state_dict:
                state_dict[prefix + own] = state_dict.pop(prefix + plain)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class _ModelMetric(_PerExampleMean):
    """A metric that runs the model: it keeps ``forward_func`` and the checked settings."""

    _function: ClassVar[Callable[..., torch.Tensor]]

    def __init__(self, forward_func: Callable[..., Any], settings: dict[str, Any],
                 **kwargs: Any) -> None:
        if not callable(forward_func):
            raise TypeError(
                f"forward_func must be callable (the model), got {type(forward_func).__name__}"
            )
        super().__init__(**kwargs)
        self._model = _SharedReference(forward_func)
        self.settings = settings

    @property
    def forward_func(self) -> Callable[..., Any]:
        """The model (or function) the metric evaluates."""
        return self._model.value  # type: ignore[no-any-return]

    def update(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        attributions: torch.Tensor,
        target: TargetType = None,
        additional_forward_args: Any = None,
    ) -> None:
        """Add the per-example values of one batch, arguments as the wrapped function's."""
        self._add(type(self)._function(
            self.forward_func, inputs, attributions, target,
            additional_forward_args=additional_forward_args, **self.settings,
        ))


class _CurveAUC(_ModelMetric):
    """Deletion or insertion AUC; the two differ in the function and the substrate."""

    _default_substrate: ClassVar[str]

    def __init__(
        self,
        forward_func: Callable[..., Any],
        *,
        steps: int = 100,
        substrate: Substrate | None = None,
        channel_reduction: str = "max",
        apply_softmax: bool = True,
        internal_batch_size: int | None = None,
        blur_kernel_size: int = 11,
        blur_sigma: float = 5.0,
        **kwargs: Any,
    ) -> None:
        substrate = self._default_substrate if substrate is None else substrate
        check_curve_settings(
            steps, substrate, channel_reduction, internal_batch_size, blur_kernel_size, blur_sigma
        )
        settings = {
            "steps": steps, "substrate": substrate, "channel_reduction": channel_reduction,
            "apply_softmax": apply_softmax, "internal_batch_size": internal_batch_size,
            "blur_kernel_size": blur_kernel_size, "blur_sigma": blur_sigma,
        }
        super().__init__(forward_func, settings, **kwargs)


class DeletionAUC(_CurveAUC):
    """Mean of :func:`~captum_regularized.metrics.deletion_auc`; lower is better.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    >>> metric = DeletionAUC(model, steps=4)
    >>> metric.update(torch.rand(3, 1, 4, 4), torch.rand(3, 4, 4), target=1)
    >>> 0.0 <= float(metric.compute()) <= 1.0
    True
    """

    higher_is_better: bool | None = False
    _function = staticmethod(deletion_auc)
    _default_substrate = "zeros"


class InsertionAUC(_CurveAUC):
    """Mean of :func:`~captum_regularized.metrics.insertion_auc`; higher is better.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    >>> metric = InsertionAUC(model, steps=4)
    >>> metric.update(torch.rand(3, 1, 4, 4), torch.rand(3, 4, 4))
    >>> metric.compute().shape
    torch.Size([])
    """

    higher_is_better: bool | None = True
    _function = staticmethod(insertion_auc)
    _default_substrate = "blur"


class _ConfidenceMetric(_ModelMetric):
    """Settings of :func:`~captum_regularized.metrics.confidence_change`."""

    def __init__(
        self,
        forward_func: Callable[..., Any],
        *,
        channel_reduction: str = "max",
        apply_softmax: bool = True,
        internal_batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        check_map_settings(channel_reduction, internal_batch_size)
        settings = {
            "channel_reduction": channel_reduction, "apply_softmax": apply_softmax,
            "internal_batch_size": internal_batch_size,
        }
        super().__init__(forward_func, settings, **kwargs)


class AverageDrop(_ConfidenceMetric):
    """Mean of :func:`~captum_regularized.metrics.average_drop`; lower is better.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> metric = AverageDrop(model)
    >>> metric.update(torch.rand(5, 1, 2, 2), torch.rand(5, 2, 2))
    >>> 0.0 <= float(metric.compute()) <= 100.0
    True
    """

    higher_is_better: bool | None = False
    _function = staticmethod(average_drop)


class AverageGain(_ConfidenceMetric):
    """Mean of :func:`~captum_regularized.metrics.average_gain`; higher is better.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> x, maps = torch.rand(6, 1, 2, 2), torch.rand(6, 2, 2)
    >>> metric = AverageGain(model)
    >>> metric.update(x[:4], maps[:4])
    >>> metric.update(x[4:], maps[4:])
    >>> torch.allclose(metric.compute(), average_gain(model, x, maps).mean())
    True
    """

    higher_is_better: bool | None = True
    _function = staticmethod(average_gain)


class IncreaseInConfidence(_ConfidenceMetric):
    """Mean of :func:`~captum_regularized.metrics.increase_in_confidence`; higher is better.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> metric = IncreaseInConfidence(model)
    >>> metric.update(torch.rand(4, 1, 2, 2), torch.rand(4, 2, 2))
    >>> float(metric.compute()) in {0.0, 25.0, 50.0, 75.0, 100.0}
    True
    """

    higher_is_better: bool | None = True
    _function = staticmethod(increase_in_confidence)


class AllegianceDeletionAUC(_ModelMetric):
    """Mean ``per_example_auc`` of :func:`~captum_regularized.metrics.allegiance_deletion_auc`.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> metric = AllegianceDeletionAUC(SimpleCNN(3, width=4))
    >>> metric.update(torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8))
    >>> 0.0 <= float(metric.compute()) <= 0.9
    True
    """

    higher_is_better: bool | None = False

    def __init__(
        self,
        forward_func: Callable[..., Any],
        *,
        fill: str | float = "black",
        fractions: Sequence[float] = ALLEGIANCE_FRACTIONS,
        channel_reduction: str = "max",
        internal_batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        fractions = tuple(fractions)
        check_allegiance_settings(fill, fractions, channel_reduction, internal_batch_size)
        settings = {
            "fill": fill, "fractions": fractions, "channel_reduction": channel_reduction,
            "internal_batch_size": internal_batch_size,
        }
        super().__init__(forward_func, settings, **kwargs)

    def update(  # type: ignore[override]
        self, inputs: torch.Tensor, attributions: torch.Tensor, additional_forward_args: Any = None
    ) -> None:
        """Add the per-example allegiance areas of a batch (``B >= 1``)."""
        curve = allegiance_deletion_auc(
            self.forward_func, inputs, attributions,
            additional_forward_args=additional_forward_args, **self.settings,
        )
        self._add(curve.per_example_auc)


def _road_combined(*args: Any, **settings: Any) -> torch.Tensor:
    """The per-example ``combined`` score of :func:`~captum_regularized.metrics.road`."""
    return cast(torch.Tensor, road(*args, order="both", **settings).combined)


class ROADCombined(_ModelMetric):
    """Mean ``combined`` score of :func:`~captum_regularized.metrics.road`; higher is better.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> metric = ROADCombined(model, percentiles=(25, 50, 75))
    >>> metric.update(torch.rand(5, 1, 4, 4), torch.rand(5, 4, 4))
    >>> metric.compute().shape
    torch.Size([])
    """

    higher_is_better: bool | None = True
    _function = staticmethod(_road_combined)

    def __init__(
        self,
        forward_func: Callable[..., Any],
        *,
        percentiles: Sequence[float] = ROAD_PERCENTILES,
        noise: float = 0.01,
        channel_reduction: str = "max",
        apply_softmax: bool = True,
        internal_batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        percentiles = tuple(percentiles)
        check_road_settings(percentiles, "both", noise, channel_reduction, internal_batch_size)
        settings = {
            "percentiles": percentiles, "noise": noise, "channel_reduction": channel_reduction,
            "apply_softmax": apply_softmax, "internal_batch_size": internal_batch_size,
        }
        super().__init__(forward_func, settings, **kwargs)


class GradientAlignment(_ModelMetric):
    """Mean of :func:`~captum_regularized.metrics.gradient_alignment`; higher is better.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> metric = GradientAlignment(SimpleCNN(3, width=4))
    >>> metric.update(torch.rand(2, 3, 8, 8), target=[0, 2])
    >>> -1.0 <= float(metric.compute()) <= 1.0
    True
    """

    higher_is_better: bool | None = True

    def __init__(
        self, forward_func: Callable[..., Any], *, rule: str = "gated", **kwargs: Any
    ) -> None:
        check_guided_rule(rule)
        check_guided_model(forward_func, type(self).__name__, "forward_func")
        super().__init__(forward_func, {"rule": rule}, **kwargs)

    def update(  # type: ignore[override]
        self, inputs: torch.Tensor, target: TargetType = None, additional_forward_args: Any = None
    ) -> None:
        """Add the per-example cosines of a batch ``(B, ...)`` (no maps)."""
        self._add(gradient_alignment(
            self.forward_func, inputs, target,
            additional_forward_args=additional_forward_args, **self.settings,
        ))


class _MaskMetric(_PerExampleMean):
    """Maps against ground-truth masks: ``update(attributions, masks)``, no model."""

    _function: ClassVar[Callable[..., torch.Tensor]]
    higher_is_better: bool | None = True

    def __init__(self, *, channel_reduction: str = "max", **kwargs: Any) -> None:
        check_map_settings(channel_reduction, None)
        super().__init__(**kwargs)
        self.channel_reduction = channel_reduction

    def update(self, attributions: torch.Tensor, masks: torch.Tensor) -> None:  # type: ignore[override]
        """Add the per-example values of a batch of maps and their masks."""
        function = type(self)._function
        self._add(function(attributions, masks, channel_reduction=self.channel_reduction))


class PointingGame(_MaskMetric):
    """Mean of :func:`~captum_regularized.metrics.pointing_game`: the accuracy.

    Examples
    --------
    >>> metric = PointingGame()
    >>> metric.update(torch.tensor([[[0.1, 0.9], [0.2, 0.3]]]), torch.tensor([[[0, 1], [0, 0]]]))
    >>> metric.update(torch.ones(1, 2, 2), torch.ones(1, 2, 2))
    >>> float(metric.compute())
    0.5
    """

    _function = staticmethod(pointing_game)


class EnergyPointingGame(_MaskMetric):
    """Mean of :func:`~captum_regularized.metrics.energy_pointing_game`.

    Examples
    --------
    >>> metric = EnergyPointingGame()
    >>> metric.update(torch.tensor([[[3.0, 1.0], [-2.0, 0.0]]]), torch.tensor([[[1, 0], [1, 0]]]))
    >>> float(metric.compute())
    0.75
    """

    _function = staticmethod(energy_pointing_game)


class GiniSparseness(_PerExampleMean):
    """Mean of :func:`~captum_regularized.metrics.gini_sparseness`; ``update(attributions)``.

    Examples
    --------
    >>> metric = GiniSparseness()
    >>> metric.update(torch.tensor([[0.0, 0.0, 0.0, 5.0]]))
    >>> metric.update(torch.tensor([[1.0, -1.0, 1.0, 1.0]]))
    >>> float(metric.compute())
    0.375
    """

    higher_is_better: bool | None = True

    def update(self, attributions: torch.Tensor) -> None:  # type: ignore[override]
        """Add the Gini indices of a batch of maps ``(B, ...)``."""
        self._add(gini_sparseness(attributions))
