"""The registry of public entry points that the contract tests run over.

Each :class:`Entry` says how to call one public function or class on a small model
and batch (:class:`Batch`), and which capabilities it claims. The contract tests in
this folder are parametrised over :data:`ENTRIES`; a new public entry point is one
line here and gets every contract that its capabilities select.

The model (:class:`ContractNet`) is small on purpose (8x8 images, three classes) and
carries a :class:`Fault` module between the Grad-CAM layer and the head, which the
fault-injection contracts arm to raise on a chosen forward call or in the backward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_regularized import attr, metrics, models, regularizers

NUM_CLASSES = 3
CHANNELS = 3
SIZE = 8
BATCH = 4


# ---------------------------------------------------------------- the model


class FaultRaised(RuntimeError):
    """What an armed :class:`Fault` raises."""


class _RaiseInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        raise FaultRaised("injected fault in the backward pass")


class Fault(nn.Module):
    """Identity that counts its forward calls and raises when armed.

    ``raise_on_call = n`` raises on the n-th forward call (counted from the last
    :meth:`reset`); ``raise_in_backward = True`` raises when a gradient flows back.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reset()

    def reset(self, raise_on_call: int | None = None, raise_in_backward: bool = False) -> None:
        self.calls = 0
        self.raise_on_call = raise_on_call
        self.raise_in_backward = raise_in_backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.raise_on_call is not None and self.calls == self.raise_on_call:
            raise FaultRaised(f"injected fault on forward call {self.calls}")
        if self.raise_in_backward:
            return _RaiseInBackward.apply(x)
        return x


class ContractNet(nn.Module):
    """conv-BN-ReLU, a conv-BN-ReLU-pool ``layer``, the :class:`Fault`, conv-ReLU, head."""

    def __init__(self, num_classes: int = NUM_CLASSES, in_channels: int = CHANNELS) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU()
        )
        self.layer = nn.Sequential(
            nn.Conv2d(4, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fault = Fault()
        self.head = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fault(self.layer(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(self.head(x)), 1))


class TwoInputNet(nn.Module):
    """``ContractNet(a + b / 2)``: a model with a tuple of inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.net = ContractNet()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.net(a + 0.5 * b)


def make_model(seed: int = 0) -> ContractNet:
    """A :class:`ContractNet` with non-trivial BatchNorm statistics and one frozen
    parameter, in eval mode."""
    torch.manual_seed(seed)
    model = ContractNet()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    model.stem[0].weight.requires_grad_(False)  # a frozen parameter must stay frozen
    return model.eval()


# ---------------------------------------------------------------- the batch


@dataclass
class Batch:
    """Inputs and what travels with them, all with the batch in dim 0."""

    inputs: torch.Tensor
    labels: torch.Tensor
    maps: torch.Tensor
    masks: torch.Tensor

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def select(self, index: slice | int) -> Batch:
        """The examples ``index`` (an int keeps a batch of one)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Batch(*(getattr(self, f.name)[index] for f in fields(self)))

    def with_inputs(self, inputs: torch.Tensor) -> Batch:
        return replace(self, inputs=inputs)

    def to(self, device: str | torch.device) -> Batch:
        return Batch(*(getattr(self, f.name).to(device) for f in fields(self)))


def make_batch(n: int = BATCH, seed: int = 1) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    return Batch(
        inputs=torch.rand(n, CHANNELS, SIZE, SIZE, generator=gen),
        labels=torch.arange(n) % NUM_CLASSES,
        maps=torch.randn(n, 1, SIZE, SIZE, generator=gen),
        masks=torch.rand(n, 1, SIZE, SIZE, generator=gen) > 0.5,
    )


# ---------------------------------------------------------------- entries

Kind = Literal["attribution", "loss", "metric", "map"]
Call = Callable[[nn.Module, Batch, Any], Any]


@dataclass(frozen=True)
class Entry:
    """One public entry point and the capabilities it claims.

    Attributes
    ----------
    name : str
        Test id.
    kind : str
        ``"attribution"`` (Captum-style class), ``"loss"`` (a regularizer),
        ``"metric"`` (takes a model) or ``"map"`` (works on maps only, no model).
    call : callable
        ``call(model, batch, target)``; ``target`` is a Captum target form for entries
        with ``targets=True`` (ignored otherwise).
    targets : bool
        Takes every Captum target form, and pytorch-grad-cam's target callables.
    score_targets : bool
        Any target callable ``score(output) -> (B,)`` is differentiated as it is;
        ``False`` where the entry needs a class per example, so that a callable must
        carry an integer ``category`` (as ``ClassifierOutputTarget`` does).
    labels : bool
        Takes training labels (class indices), checked like cross-entropy's.
    differentiates : bool
        Needs autograd (refuses ``torch.inference_mode()`` with a clear error).
    empty_batch : ``"empty"`` or ``"error"``
        What a batch of zero examples gives: an empty result, or a ``ValueError``
        naming the inputs.
    method : callable, optional
        For attribution classes: ``method(model)`` builds the Captum-style object, for
        ``NoiseTunnel`` and ``captum.metrics.infidelity``.
    attribute_kwargs : dict
        Extra arguments of ``attribute`` used by those wrappers.
    tuple_inputs, noise_tunnel, infidelity, convergence_delta, autocast : bool
        Capabilities the contracts check.
    float_inputs_only : bool
        Integer inputs are a ``TypeError``; ``False`` where they go to the model as they
        are (forward-only evaluation of a model that may normalise them itself).
    rejects_non_finite : bool
        NaN / inf inputs (maps, for map-only entries) are a ``ValueError``; ``False``
        where the entry is a plain element-wise reduction that keeps them visible.
    train_buffers : ``"untouched"``, ``"one_forward"`` or ``"any"``
        What a call on a train-mode model may do to BatchNorm statistics: nothing, or
        exactly what one plain forward of the batch does (the losses return logits);
        ``"any"`` where the entry does more forwards by design (adversarial loss).
    compiles : bool
        Given a ``torch.compile``'d model it runs the compiled graph and gives the eager
        answer (first-order entries).
    refuses_compiled : bool
        A ``torch.compile``'d model is a ``TypeError`` pointing to ``model._orig_mod``
        (one compiled in place by ``module.compile()``: a ``TypeError`` saying so),
        raised before the model runs (the guided rule, double backpropagation).
    """

    name: str
    kind: Kind
    call: Call
    targets: bool = False
    score_targets: bool = False
    labels: bool = False
    differentiates: bool = True
    empty_batch: Literal["empty", "error"] = "empty"
    method: Callable[[nn.Module], Any] | None = None
    attribute_kwargs: dict[str, Any] | None = None
    tuple_inputs: bool = False
    noise_tunnel: bool = False
    infidelity: bool = False
    convergence_delta: bool = False
    autocast: bool = True
    float_inputs_only: bool = True
    rejects_non_finite: bool = True
    train_buffers: Literal["untouched", "one_forward", "any"] = "untouched"
    compiles: bool = False
    refuses_compiled: bool = False

    @property
    def uses_model(self) -> bool:
        return self.kind != "map"


def _attribution(cls: type, **kwargs: Any) -> Call:
    def call(model: nn.Module, batch: Batch, target: Any) -> Any:
        return cls(model).attribute(batch.inputs, target=target, **kwargs)

    return call


def _rsi(model: nn.Module, batch: Batch, target: Any) -> Any:
    return attr.LayerRSIGradCam(model, _layer_of(model)).attribute(
        batch.inputs, target=target, n_steps=4
    )


def _grad_cam_plus_plus(model: nn.Module, batch: Batch, target: Any) -> Any:
    return attr.LayerGradCamPlusPlus(model, _layer_of(model)).attribute(batch.inputs, target=target)


def _score_cam(model: nn.Module, batch: Batch, target: Any) -> Any:
    return attr.LayerScoreCam(model, _layer_of(model)).attribute(
        batch.inputs, target=target, internal_batch_size=5
    )


def _parameter_randomisation(model: nn.Module, batch: Batch, target: Any) -> Any:
    return metrics.model_parameter_randomisation(
        model, batch.inputs, target, attr.PositiveSaliency, layers=["classifier", "head.0"]
    )


def _data_randomisation(model: nn.Module, batch: Batch, target: Any) -> Any:
    shuffled = make_model(seed=1).to(next(model.parameters()).device)
    return metrics.data_randomisation(model, shuffled, batch.inputs, target,
                                      attr.PositiveSaliency)


def _fixed_perturbation(inputs: torch.Tensor, radius: float) -> torch.Tensor:
    """Deterministic, so a batch and its rows see the same perturbed copies."""
    return inputs + radius * torch.sin(100 * inputs)


def _max_sensitivity(model: nn.Module, batch: Batch, target: Any) -> Any:
    return metrics.max_sensitivity(attr.PositiveSaliency(model), batch.inputs, target,
                                   n_samples=2, perturb_func=_fixed_perturbation)


def _interpretation_attack(model: nn.Module, batch: Batch, target: Any) -> Any:
    return metrics.interpretation_attack(model, batch.inputs, target=target, epsilon=0.05,
                                         steps=2, k=4)


def _guided_grad_cam(model: nn.Module, batch: Batch, target: Any) -> Any:
    return attr.GuidedGradCam(model, _layer_of(model)).attribute(batch.inputs, target=target)


def _layer_of(model: nn.Module) -> nn.Module:
    """The Grad-CAM layer: ``layer`` of the :class:`ContractNet`, also inside a
    :class:`TwoInputNet` or a ``torch.compile``'d module (``_orig_mod``)."""
    model = getattr(model, "_orig_mod", model)
    net = model.net if isinstance(model, TwoInputNet) else model
    return net.layer


def _signed_maps(model: nn.Module, batch: Batch, target: Any) -> Any:
    return attr.signed_saliency_maps(model, batch.inputs, target=target)


def _metric(fn: Callable[..., Any], **kwargs: Any) -> Call:
    def call(model: nn.Module, batch: Batch, target: Any) -> Any:
        return fn(model, batch.inputs, batch.maps, target=target, **kwargs)

    return call


def _allegiance(model: nn.Module, batch: Batch, target: Any) -> Any:
    return metrics.allegiance_deletion_auc(model, batch.inputs, batch.maps)


def _gradient_alignment(model: nn.Module, batch: Batch, target: Any) -> Any:
    return metrics.gradient_alignment(model, batch.inputs, target=target)


def _loader(batch: Batch) -> DataLoader:
    data = TensorDataset(batch.inputs, batch.labels, batch.masks)
    return DataLoader(data, batch_size=2)


def _evaluate_dataset(model: nn.Module, batch: Batch, target: Any) -> Any:
    def deletion(b: metrics.MetricBatch) -> torch.Tensor:
        return metrics.deletion_auc(b.model, b.inputs, b.attributions, b.targets, steps=4)

    return metrics.evaluate_dataset(
        model,
        _loader(batch),
        attr.PositiveSaliency(model),
        {"deletion_auc": deletion, "pointing_game": "pointing_game"},
        progress=False,
        distributed=False,
    )


def _evaluate_accuracy(model: nn.Module, batch: Batch, target: Any) -> Any:
    return torch.tensor(
        models.evaluate_accuracy(model, TensorDataset(batch.inputs, batch.labels), batch_size=2)
    )


def _evaluate_correct(model: nn.Module, batch: Batch, target: Any) -> Any:
    return models.evaluate_correct(
        model, TensorDataset(batch.inputs, batch.labels), batch_size=2
    ).double()


def _guided(mode: str, **kwargs: Any) -> Call:
    def call(model: nn.Module, batch: Batch, target: Any) -> Any:
        reg = regularizers.GuidedGradientRegularizer(model, weight=1.0, mode=mode, **kwargs)
        return reg(batch.inputs, batch.labels)

    return call


def _norm_penalty(norm: str, **kwargs: Any) -> Call:
    def call(model: nn.Module, batch: Batch, target: Any) -> Any:
        mask = batch.masks.float() if norm == "gaze" else None
        reg = regularizers.GradientNormPenalty(model, norm=norm, epsilon=0.1, **kwargs)
        return reg(batch.inputs, batch.labels, mask=mask)

    return call


def _adversarial(norm: str, *, perturb: bool = False, **kwargs: Any) -> Call:
    def call(model: nn.Module, batch: Batch, target: Any) -> Any:
        mask = batch.masks.float() if norm == "gaze" else None
        adv = regularizers.NormRegularizedAdversarialLoss(model, norm=norm, epsilon=0.05, **kwargs)
        if perturb:
            return adv.perturb(batch.inputs, batch.labels, mask=mask)
        return adv(batch.inputs, batch.labels, mask=mask)

    return call


def _map_only(fn: Callable[..., Any], *, with_masks: bool = False) -> Call:
    def call(model: nn.Module, batch: Batch, target: Any) -> Any:
        if with_masks:
            return fn(batch.maps, batch.masks)
        return fn(batch.maps)

    return call


def _map_from_inputs(fn: Callable[..., Any]) -> Call:
    def call(model: nn.Module, batch: Batch, target: Any) -> Any:
        return fn(batch.inputs)

    return call


def _captum_style(
    name: str,
    call: Call,
    method: Callable[[nn.Module], Any],
    *,
    score_targets: bool = True,
    **capabilities: Any,
) -> Entry:
    """An attribution class: every target form, tuple inputs and ``NoiseTunnel``."""
    return Entry(
        name, "attribution", call, targets=True, score_targets=score_targets, method=method,
        tuple_inputs=True, noise_tunnel=True, **capabilities,
    )


def _with_layer(cls: type) -> Callable[[nn.Module], Any]:
    """``method(model)`` of a layer method, on the registry's layer of the model."""
    return lambda model: cls(model, _layer_of(model))


SIGNED = [attr.PositiveSaliency, attr.NegativeSaliency, attr.ActiveSaliency, attr.InactiveSaliency]

ENTRIES: list[Entry] = [
    *(
        _captum_style(
            cls.__name__,
            _attribution(cls),
            cls,
            score_targets=cls in (attr.PositiveSaliency, attr.NegativeSaliency),
            infidelity=True,
            compiles=True,
        )
        for cls in SIGNED
    ),
    Entry("signed_saliency_maps", "attribution", _signed_maps, targets=True, compiles=True),
    _captum_style(
        "LayerGradCamPlusPlus", _grad_cam_plus_plus, _with_layer(attr.LayerGradCamPlusPlus),
        compiles=True,
    ),
    _captum_style(
        "LayerScoreCam", _score_cam, _with_layer(attr.LayerScoreCam),
        attribute_kwargs={"internal_batch_size": 5}, differentiates=False, compiles=True,
    ),
    _captum_style(
        "LayerRSIGradCam",
        _rsi,
        _with_layer(attr.LayerRSIGradCam),
        attribute_kwargs={"n_steps": 4},
        convergence_delta=True,
        compiles=True,
    ),
    _captum_style(
        "GuidedBackprop", _attribution(attr.GuidedBackprop), attr.GuidedBackprop, infidelity=True,
        refuses_compiled=True,
    ),
    _captum_style(
        "GuidedGradCam", _guided_grad_cam, _with_layer(attr.GuidedGradCam), infidelity=True,
        refuses_compiled=True,
    ),
    *(
        Entry(f"GuidedGradientRegularizer[{mode}]", "loss", _guided(mode), labels=True,
              empty_batch="error", train_buffers="one_forward",
              compiles=mode == "finite_difference", refuses_compiled=mode == "double_backprop")
        for mode in ("double_backprop", "finite_difference")
    ),
    Entry("GuidedGradientRegularizer[double_backprop,ungated]", "loss",
          _guided("double_backprop", rule="ungated"), labels=True, empty_batch="error",
          train_buffers="one_forward", refuses_compiled=True),
    *(
        Entry(f"GradientNormPenalty[{norm}{label}]", "loss",
              _norm_penalty(norm, **kw), labels=True,
              empty_batch="error", train_buffers="one_forward",
              compiles=kw.get("mode") == "finite_difference",
              refuses_compiled=kw.get("mode") == "double_backprop")
        for norm, label, kw in [
            ("l1", "", {"mode": "double_backprop"}),
            ("group", "", {"group_size": 4, "mode": "double_backprop"}),
            ("gaze", "", {"mode": "double_backprop"}),
            ("l1", ",fd", {"mode": "finite_difference"}),
            ("group", ",fd", {"group_size": 4, "mode": "finite_difference"}),
            # the default mode="auto": exact here (on a compiled model it takes finite
            # differences, so the compile contract's "same as eager" does not apply)
            ("l1", ",auto", {}),
        ]
    ),
    *(
        Entry(f"NormRegularizedAdversarialLoss[{norm},{steps}{label}]", "loss",
              _adversarial(norm, steps=steps, **kw), labels=True, empty_batch="error",
              train_buffers="any")
        for norm, steps, label, kw in [
            ("l1", 1, "", {}),
            ("l1", 3, "", {}),
            ("elastic_net", 2, "", {"epsilon2": 0.05}),
            # the authors' inner loop: from delta = 0, BatchNorm statistics updated
            ("l1", 3, ",zero", {"start": "zero"}),
            ("l1", 3, ",update_batchnorm", {"update_batchnorm": True}),
        ]
    ),
    Entry("NormRegularizedAdversarialLoss.perturb", "loss",
          _adversarial("group", perturb=True, steps=2, group_size=4), labels=True,
          empty_batch="error"),
    Entry("NormRegularizedAdversarialLoss.perturb[zero,update_batchnorm]", "loss",
          _adversarial("l1", perturb=True, steps=2, start="zero", update_batchnorm=True),
          labels=True, empty_batch="error", train_buffers="any"),
    Entry("deletion_auc", "metric", _metric(metrics.deletion_auc, steps=4),
          targets=True, differentiates=False, compiles=True),
    Entry("insertion_auc", "metric", _metric(metrics.insertion_auc, steps=4),
          targets=True, differentiates=False, compiles=True),
    Entry("deletion_curve", "metric", _metric(metrics.deletion_curve, steps=4),
          targets=True, differentiates=False, compiles=True),
    Entry("insertion_curve", "metric", _metric(metrics.insertion_curve, steps=4),
          targets=True, differentiates=False, compiles=True),
    Entry("confidence_change", "metric", _metric(metrics.confidence_change),
          targets=True, differentiates=False, compiles=True),
    Entry("average_drop", "metric", _metric(metrics.average_drop),
          targets=True, differentiates=False, compiles=True),
    Entry("average_gain", "metric", _metric(metrics.average_gain),
          targets=True, differentiates=False, compiles=True),
    Entry("increase_in_confidence", "metric", _metric(metrics.increase_in_confidence),
          targets=True, differentiates=False, compiles=True),
    Entry("allegiance_deletion_auc", "metric", _allegiance, differentiates=False,
          empty_batch="error", compiles=True),
    Entry("road", "metric", _metric(metrics.road, percentiles=(25, 50, 75), noise=0.0),
          targets=True, differentiates=False),
    Entry("max_sensitivity", "metric", _max_sensitivity, targets=True, score_targets=True),
    Entry("interpretation_attack", "metric", _interpretation_attack, targets=True),
    Entry("model_parameter_randomisation", "metric", _parameter_randomisation, targets=True),
    Entry("data_randomisation", "metric", _data_randomisation, targets=True),
    Entry("gradient_alignment", "metric", _gradient_alignment, targets=True, score_targets=True,
          refuses_compiled=True),
    Entry("evaluate_dataset", "metric", _evaluate_dataset, empty_batch="error", autocast=False),
    Entry("evaluate_accuracy", "metric", _evaluate_accuracy, differentiates=False,
          empty_batch="error", autocast=False, float_inputs_only=False, compiles=True),
    Entry("evaluate_correct", "metric", _evaluate_correct, differentiates=False,
          empty_batch="error", autocast=False, float_inputs_only=False, compiles=True),
    Entry("gini_sparseness", "map", _map_only(metrics.gini_sparseness), differentiates=False),
    Entry("pointing_game", "map", _map_only(metrics.pointing_game, with_masks=True),
          differentiates=False, empty_batch="error"),
    Entry("energy_pointing_game", "map", _map_only(metrics.energy_pointing_game, with_masks=True),
          differentiates=False, empty_batch="error"),
    Entry("normalize_per_example", "map", _map_only(attr.normalize_per_example),
          differentiates=False, empty_batch="error"),
    Entry("reduce_channels", "map", _map_from_inputs(attr.reduce_channels), differentiates=False,
          rejects_non_finite=False),
]


# The torchmetrics Metric objects (the ``lightning`` extra): a call builds the metric,
# updates it with the batch and returns ``compute()``, the mean over the batch. One entry
# per kind of update (the others share its code and wrap functions registered above).
try:
    from captum_regularized.metrics import torchmetrics as metric_objects
except ImportError:  # torchmetrics is not installed: no entries for them
    metric_objects = None


def _metric_object(make: Callable[[nn.Module], Any], update: str) -> Call:
    arguments = {
        "maps": lambda b: (b.inputs, b.maps),
        "inputs": lambda b: (b.inputs,),
        "masks": lambda b: (b.maps, b.masks),
        "maps only": lambda b: (b.maps,),
    }[update]

    def call(model: nn.Module, batch: Batch, target: Any) -> Any:
        metric = make(model)
        metric.update(*arguments(batch))
        return metric.compute()

    return call


if metric_objects is not None:
    _mo = metric_objects
    ENTRIES += [
        # They work on compiled models too, but pass the model on to the functions
        # above (compiles=True there), so the suite does not compile for them again.
        *(
            Entry(f"torchmetrics.{name}", "metric", _metric_object(make, "maps"),
                  differentiates=False, empty_batch="error")
            for name, make in [
                ("DeletionAUC", lambda m: _mo.DeletionAUC(m, steps=4)),
                ("AverageDrop", _mo.AverageDrop),
                ("AllegianceDeletionAUC", _mo.AllegianceDeletionAUC),
                ("ROADCombined", lambda m: _mo.ROADCombined(m, percentiles=(25, 75), noise=0.0)),
            ]
        ),
        Entry("torchmetrics.GradientAlignment", "metric",
              _metric_object(_mo.GradientAlignment, "inputs"), empty_batch="error",
              refuses_compiled=True),
        Entry("torchmetrics.PointingGame", "map",
              _metric_object(lambda m: _mo.PointingGame(), "masks"),
              differentiates=False, empty_batch="error"),
        Entry("torchmetrics.GiniSparseness", "map",
              _metric_object(lambda m: _mo.GiniSparseness(), "maps only"),
              differentiates=False, empty_batch="error"),
    ]

BY_NAME = {entry.name: entry for entry in ENTRIES}


def select(predicate: Callable[[Entry], bool]) -> list[Any]:
    """``pytest.param``-ready entries (id = name) for which ``predicate`` holds."""
    import pytest

    return [pytest.param(e, id=e.name) for e in ENTRIES if predicate(e)]


# ---------------------------------------------------------------- outputs


def output_tensors(output: Any) -> list[torch.Tensor]:
    """Every tensor in an entry's output, in a fixed order (tuples, dicts, NamedTuples)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for key in sorted(output, key=str) for t in output_tensors(output[key])]
    if is_dataclass(output) and not isinstance(output, type):
        return [t for f in fields(output) for t in output_tensors(getattr(output, f.name))]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in output_tensors(item)]
    if isinstance(output, (int, float)):
        return [torch.tensor(float(output))]
    return []
