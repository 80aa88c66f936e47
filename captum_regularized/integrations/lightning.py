"""Lightning: explanations at the end of validation, and regularized training steps.

* :class:`ExplanationCallback` explains a fixed set of validation images with the
  attribution methods you name (ours or Captum's) at the end of a validation epoch and
  logs the metrics of :data:`~captum_regularized.metrics.BUILTIN_METRICS` and, when a
  logger takes figures (TensorBoard), a figure of the maps.
* :class:`RegularizedTrainingStep` is a ``LightningModule`` base whose
  ``training_step`` returns the ``.loss`` of the module's ``regularizer`` (any of
  :mod:`captum_regularized.regularizers`, or ``None`` for plain cross-entropy) and logs
  its parts; :class:`RegularizedClassifier` is a ready module around a network.

Batches are read by :func:`split_batch`: ``(images, labels)`` or ``(images, labels,
masks)``, the layout of this package's data sets; pass your own ``batch_to_images``
(callback) or override ``split_training_batch`` (module) for other layouts.

This module needs Lightning (the ``lightning`` extra,
``pip install "captum-regularized[lightning]"``); ``import captum_regularized`` never
imports it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from captum_regularized._internal.checks import check_class_scores
from captum_regularized._internal.extras import optional_extra
from captum_regularized._internal.method_maps import method_maps
from captum_regularized._internal.model_outputs import logits_of
from captum_regularized._internal.model_state import preserved_model
from captum_regularized.integrations.quantus import MethodSpec, resolve_method
from captum_regularized.metrics.dataset_evaluation import (
    BUILTIN_METRICS,
    MetricBatch,
    MetricFn,
    resolve_metrics,
)
from captum_regularized.regularizers.regularizer_output import RegularizerOutput

with optional_extra(__name__, "Lightning"):
    import lightning.pytorch as pl

__all__ = [
    "DEFAULT_METRICS",
    "ExplanationCallback",
    "RegularizedClassifier",
    "RegularizedLoss",
    "RegularizedTrainingStep",
    "split_batch",
]

DEFAULT_METRICS: tuple[str, ...] = ("deletion_auc", "insertion_auc", "gini_sparseness")
"""What :class:`ExplanationCallback` logs unless told otherwise."""

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
BatchToImages = Callable[[Any], Batch]


def split_batch(batch: Any) -> Batch:
    """``(images, labels, masks-or-None)`` of an ``(images, labels[, masks])`` batch.

    A third item that is not a tensor (``None``, as this package's data sets give for
    images without a mask) means no masks.

    Raises
    ------
    TypeError
        For any other layout (pass your own ``batch_to_images`` then).

    Examples
    --------
    >>> images, labels, masks = split_batch([torch.rand(2, 3, 4, 4), torch.tensor([0, 1])])
    >>> images.shape, masks is None
    (torch.Size([2, 3, 4, 4]), True)
    """
    if (
        isinstance(batch, (tuple, list))
        and len(batch) >= 2
        and isinstance(batch[0], torch.Tensor)
        and isinstance(batch[1], torch.Tensor)
    ):
        masks = batch[2] if len(batch) > 2 and isinstance(batch[2], torch.Tensor) else None
        return batch[0], batch[1], masks
    raise TypeError(
        "expected (images, labels) or (images, labels, masks) batches of tensors, got "
        f"{type(batch).__name__}; pass batch_to_images= (a callable returning "
        "(images, labels, masks-or-None)) for other layouts"
    )


class _BuiltinMetric:
    """A metric of :data:`~captum_regularized.metrics.BUILTIN_METRICS` held by its name.

    The built-in metrics are lambdas, which ``pickle`` cannot store; this stand-in
    pickles as its name and calls the built-in metric.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, batch: MetricBatch) -> torch.Tensor:
        return BUILTIN_METRICS[self.name](batch)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _picklable_metrics(metrics: Mapping[str, MetricFn]) -> dict[str, MetricFn]:
    """``metrics`` with every built-in metric replaced by its :class:`_BuiltinMetric`."""
    builtin_names = {id(function): name for name, function in BUILTIN_METRICS.items()}
    return {
        name: _BuiltinMetric(builtin_names[id(metric)]) if id(metric) in builtin_names else metric
        for name, metric in metrics.items()
    }


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


@contextlib.contextmanager
def _explaining(model: nn.Module) -> Iterator[None]:
    """Gradients on, in eval mode, parameters frozen; everything back afterwards.

    The parameters' ``requires_grad`` flags are switched off for the block, so no
    method can write their ``.grad`` nor take part in DDP's gradient synchronisation;
    the ``.grad`` tensors themselves are put back too, and the random state is that of
    before (the training's random draws do not depend on the callback).
    """
    parameters = list(model.parameters())
    grads = [(parameter, parameter.grad) for parameter in parameters]
    devices = sorted({p.device.index or 0 for p in parameters if p.device.type == "cuda"})
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(torch.random.fork_rng(devices=devices))
        stack.enter_context(preserved_model(model, eval_mode=True))
        try:
            for parameter in parameters:
                parameter.requires_grad_(False)
            yield
        finally:
            for parameter, grad in grads:
                parameter.grad = grad


class ExplanationCallback(pl.Callback):
    """Explain fixed validation images at the end of validation epochs and log the scores.

    The first ``num_images`` images of the first validation dataloader are kept; after
    every ``every_n_epochs``-th epoch's validation the callback explains them with every
    method, scores the maps with every metric and logs each mean as
    ``explanations/{method}/{metric}`` (over all ranks under DDP), plus a figure of the
    maps on loggers that take figures. The model is left as found (modes, flags,
    ``.grad``, BatchNorm statistics, random state) and the callback pickles for
    ``ddp_spawn``: :doc:`/design_notes/integrations`.

    Parameters
    ----------
    methods : mapping of str to method
        Name (used in the logged keys) to a class name or class of
        :mod:`captum_regularized.attr` or :mod:`captum.attr` (built on the
        ``LightningModule``, layer methods with ``layer``), a ready attribution object
        (built by you, on the module or its network), or a callable
        ``method(images, targets) -> maps``. A method returns one tensor of maps.
    every_n_epochs : int
        Explain after every ``every_n_epochs``-th epoch's validation.
    num_images : int
        How many validation images to keep and explain (fewer if the validation set is
        smaller).
    metrics : sequence of str or mapping
        Names from :data:`~captum_regularized.metrics.BUILTIN_METRICS` (default
        :data:`DEFAULT_METRICS`), or ``{name: metric}`` where a metric is such a name or
        a callable ``metric(MetricBatch) -> (B,)`` values; empty to log only the figure.
        ``pointing_game`` and ``energy_pointing_game`` need masks in the batches.
    layer : nn.Module or str, optional
        The layer of the layer methods given by name or class (a module or its dotted
        name in the ``LightningModule``, e.g. ``"net.block3"``).
    target : {"predicted", "label"}
        Explain (and score) the predicted class or the label.
    attribute_kwargs : mapping of str to dict, optional
        Per method name, extra arguments of ``attribute`` (e.g. ``{"RSI": {"n_steps":
        16}}``).
    batch_to_images : callable, optional
        ``batch_to_images(batch) -> (images, labels, masks-or-None)`` for validation
        batches of another layout; default :func:`split_batch`.
    log_figure : bool
        Log the figure on loggers that take figures.
    figure_kwargs : dict, optional
        Extra arguments of :func:`~captum_regularized.visualization.plot_attributions`.

    Attributes
    ----------
    images : Tensor or None
        The kept images (CPU), ``None`` before they are collected.
    last_maps : dict of str to Tensor
        The maps of the last explanation (CPU), by method name.
    explained_epochs : list of int
        The epochs explained so far.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> callback = ExplanationCallback({"saliency": "Saliency", "grad-cam": "LayerGradCam"},
    ...                                layer="net.block3", every_n_epochs=2, num_images=4)
    >>> sorted(callback.metrics)
    ['deletion_auc', 'gini_sparseness', 'insertion_auc']

    With ``trainer = lightning.Trainer(callbacks=[callback])``, ``trainer.fit(module)``
    logs ``explanations/saliency/deletion_auc`` and the others after epochs 2, 4, ...
    """

    def __init__(
        self,
        methods: Mapping[str, MethodSpec | Callable[..., torch.Tensor]],
        every_n_epochs: int = 1,
        num_images: int = 8,
        metrics: Sequence[str] | Mapping[str, MetricFn | str] = DEFAULT_METRICS,
        layer: nn.Module | str | None = None,
        *,
        target: Literal["predicted", "label"] = "predicted",
        attribute_kwargs: Mapping[str, dict[str, Any]] | None = None,
        batch_to_images: BatchToImages | None = None,
        log_figure: bool = True,
        figure_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(methods, Mapping) or not methods:
            raise TypeError(
                "methods must be a non-empty mapping of names to attribution methods, "
                f"got {methods!r}"
            )
        for name, method in methods.items():
            if not isinstance(name, str):
                raise TypeError(f"method names must be strings, got {name!r}")
            if not (isinstance(method, str) or callable(method) or hasattr(method, "attribute")):
                raise TypeError(
                    f"methods[{name!r}] must be a class name, an attribution class or object, "
                    f"or a callable method(images, targets), got {type(method).__name__}"
                )
        if target not in ("predicted", "label"):
            raise ValueError(f"target must be 'predicted' or 'label', got {target!r}")
        kwargs = dict(attribute_kwargs or {})
        unknown = sorted(set(kwargs) - set(methods))
        if unknown:
            raise ValueError(f"attribute_kwargs names methods that are not given: {unknown}")
        if batch_to_images is not None and not callable(batch_to_images):
            raise TypeError(
                f"batch_to_images must be callable, got {type(batch_to_images).__name__}"
            )
        self.methods = dict(methods)
        self.every_n_epochs = _positive_int(every_n_epochs, "every_n_epochs")
        self.num_images = _positive_int(num_images, "num_images")
        chosen = isinstance(metrics, str) or len(metrics) > 0
        self.metrics: dict[str, MetricFn] = (
            _picklable_metrics(resolve_metrics(metrics)) if chosen else {}
        )
        self.layer = layer
        self.target = target
        self.attribute_kwargs = kwargs
        self.batch_to_images: BatchToImages = batch_to_images or split_batch
        self.log_figure = bool(log_figure)
        self.figure_kwargs = dict(figure_kwargs or {})
        self.images: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self._masks: torch.Tensor | None = None
        self.last_maps: dict[str, torch.Tensor] = {}
        self.explained_epochs: list[int] = []
        self._pieces: list[Batch] = []
        self._collected = 0
        self._frozen = False
        self._resolved: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        """The callback's state for ``pickle``, without the methods built on the module."""
        state = self.__dict__.copy()
        state["_resolved"] = {}  # rebuilt by setup() or the next explanation
        return state

    # ------------------------------------------------------------ Lightning hooks

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Build the attribution objects on the module (bad names and layers fail here)."""
        self._resolved = {name: self._build(pl_module, spec) for name, spec in self.methods.items()}

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep images of the first validation epoch until ``num_images`` are kept."""
        if self._frozen or trainer.sanity_checking or dataloader_idx != 0:
            return
        wanted = self.num_images - self._collected
        if wanted <= 0:
            return
        images, labels, masks = self.batch_to_images(batch)
        with torch.inference_mode(False):  # normal tensors, usable with autograd later
            piece = tuple(
                None if t is None else t[:wanted].detach().to("cpu", copy=True)
                for t in (images, labels, masks)
            )
        self._pieces.append(piece)  # type: ignore[arg-type]
        self._collected += len(piece[0])  # type: ignore[arg-type]

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Explain the kept images after every ``every_n_epochs``-th epoch's validation."""
        if trainer.sanity_checking:
            return
        if not self._frozen:
            self._freeze()
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs != 0 or epoch in self.explained_epochs:
            return
        self.explained_epochs.append(epoch)
        for key, value in self.explain(pl_module, trainer).items():
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=True)
        if self.log_figure and self.last_maps and trainer.is_global_zero:
            self._log_figure(trainer)

    # ------------------------------------------------------------ the work

    def explain(
        self, pl_module: pl.LightningModule, trainer: pl.Trainer | None = None
    ) -> dict[str, torch.Tensor]:
        """Explain the kept images now and return the mean of every metric.

        Parameters
        ----------
        pl_module : LightningModule
            The model; left as found.
        trainer : Trainer, optional
            When given, the means are over the images of all ranks (every rank must
            call it together, as :meth:`on_validation_epoch_end` does).

        Returns
        -------
        dict of str to Tensor
            ``explanations/{method}/{metric}`` to a 0-d tensor on the module's device;
            empty when no image is kept on any rank. The maps are in :attr:`last_maps`.
        """
        keys = [f"explanations/{m}/{s}" for m in self.methods for s in self.metrics]
        device = pl_module.device
        totals = torch.zeros(len(keys) + 1, device=device)
        self.last_maps = {}
        if self.images is not None and self._labels is not None:
            with _explaining(pl_module):
                sums = self._scores(pl_module, self.images, self._labels, self._masks)
            totals = torch.stack([*(sums[key] for key in keys), totals.new_tensor(
                float(len(self.images)))])
        if trainer is not None:
            totals = trainer.strategy.reduce(totals, reduce_op="sum")
        if not float(totals[-1]) > 0:
            return {}
        return {key: total / totals[-1] for key, total in zip(keys, totals[:-1])}

    def _freeze(self) -> None:
        self._frozen = True
        if not self._pieces:
            return
        images, labels, masks = zip(*self._pieces)
        with torch.inference_mode(False):  # called under inference mode by Trainer.validate
            self.images = torch.cat(images)
            self._labels = torch.cat(labels)
            self._masks = None if any(m is None for m in masks) else torch.cat(masks)
        self._pieces = []

    def _build(self, pl_module: pl.LightningModule, spec: Any) -> Any:
        if isinstance(spec, (str, type)):
            return resolve_method(pl_module, spec, layer=self.layer)
        return spec

    def _scores(
        self,
        pl_module: pl.LightningModule,
        images: torch.Tensor,
        labels: torch.Tensor,
        masks: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """Per ``explanations/{method}/{metric}`` key, the sum of the per-example values."""
        device = pl_module.device
        images, labels = images.to(device), labels.to(device)
        masks = None if masks is None else masks.to(device)
        if self.target == "label":
            targets = labels.long()
        else:
            with torch.no_grad():
                scores = check_class_scores(
                    logits_of(pl_module(images), "model"), batch=len(images), who="model"
                )
            targets = scores.argmax(dim=1)
        if not self._resolved:
            self._resolved = {n: self._build(pl_module, s) for n, s in self.methods.items()}
        sums: dict[str, torch.Tensor] = {}
        for name, method in self._resolved.items():
            kwargs = dict(self.attribute_kwargs.get(name, {}))
            maps = cast(torch.Tensor, method_maps(method, images, targets, kwargs))
            self.last_maps[name] = maps.cpu()
            batch = MetricBatch(pl_module, images, targets, labels, maps, masks)
            for metric, score in self.metrics.items():
                values = score(batch).detach().reshape(len(images))
                sums[f"explanations/{name}/{metric}"] = values.float().sum().to(device)
        return sums

    def _log_figure(self, trainer: pl.Trainer) -> None:
        experiments: list[Any] = [getattr(logger, "experiment", None) for logger in trainer.loggers]
        writers = [e for e in experiments if callable(getattr(e, "add_figure", None))]
        if not writers or self.images is None:
            return
        import matplotlib.pyplot as plt

        from captum_regularized.visualization import plot_attributions

        figure, _ = plot_attributions(
            self.images, self.last_maps, mask=self._masks, **self.figure_kwargs
        )
        try:
            for writer in writers:
                writer.add_figure("explanations", figure, global_step=trainer.global_step)
        finally:
            plt.close(figure)


# ---------------------------------------------------------------- training


class RegularizedLoss(NamedTuple):
    """The parts of a regularized training loss of one batch.

    Attributes
    ----------
    loss : Tensor
        The 0-d training loss (what ``training_step`` returns).
    logits : Tensor or None
        ``(B, classes)``, detached; ``None`` for a loss hook that gives none.
    cross_entropy : Tensor or None
        The task loss on ``logits`` (``loss - penalty``), detached.
    penalty : Tensor or None
        The regularizer's penalty, detached; ``None`` without one.
    """

    loss: torch.Tensor
    logits: torch.Tensor | None
    cross_entropy: torch.Tensor | None
    penalty: torch.Tensor | None


class RegularizedTrainingStep(pl.LightningModule):
    """A ``LightningModule`` whose ``training_step`` is a regularizer's training loss.

    Set ``self.regularizer`` in ``__init__`` (built on the network the module calls)
    and define ``forward`` and ``configure_optimizers``; ``training_step`` then
    returns the batch's training loss, Lightning back-propagates it (the double
    backpropagation of the gradient penalties happens there) and steps the optimizer.
    The regularizer is one of

    * one of the library's regularizers, which return a
      :class:`~captum_regularized.regularizers.RegularizerOutput`:
      :class:`~captum_regularized.regularizers.GuidedGradientRegularizer`,
      :class:`~captum_regularized.regularizers.GradientNormPenalty`,
      :class:`~captum_regularized.regularizers.NormRegularizedAdversarialLoss` (the
      ``"gaze"`` norm gets the batch's masks); loss: its ``.loss``;
    * a hook of one's own returning ``(logits, penalty)``; loss
      ``cross_entropy(logits, labels) + penalty``;
    * a hook of one's own returning the 0-d loss;
    * ``None``: plain cross-entropy on the logits of ``self(images)`` (a tensor, a
      Hugging Face ``ModelOutput`` or a dict with key ``"logits"``).

    It logs ``train/loss`` and, when known, ``train/cross_entropy``,
    ``train/penalty``, ``train/accuracy`` and ``train/cosine`` (the guided
    regularizer's ``last_cosine``). It works as a mixin too: ``class
    MyModule(RegularizedTrainingStep, MyBase)`` for a ``MyBase`` that is a
    ``LightningModule``.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> from captum_regularized.regularizers import GuidedGradientRegularizer
    >>> class Aligned(RegularizedTrainingStep):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = SimpleCNN(3, width=4)
    ...         self.regularizer = GuidedGradientRegularizer(self.net, weight=0.04)
    ...     def forward(self, x):
    ...         return self.net(x)
    ...     def configure_optimizers(self):
    ...         return torch.optim.AdamW(self.parameters(), lr=1e-3)
    >>> parts = Aligned().regularized_loss(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))
    >>> parts.loss.requires_grad, bool(parts.loss >= parts.cross_entropy)
    (True, True)
    """

    regularizer: Any = None

    def split_training_batch(self, batch: Any) -> Batch:
        """``(images, labels, masks-or-None)`` of a training batch; :func:`split_batch`."""
        return split_batch(batch)

    def regularized_loss(
        self, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None = None
    ) -> RegularizedLoss:
        """The training loss of a batch and its parts, with the regularizer's graph.

        Raises
        ------
        ValueError
            For the ``"gaze"`` norm without masks, or logits that are not
            ``(batch, classes)``.
        TypeError
            When the regularizer returns neither a ``(logits, penalty)`` pair of
            tensors nor a 0-d loss, or (without a regularizer) the module returns
            neither logits, nor a ``ModelOutput`` or dict holding them.
        """
        regularizer = self.regularizer
        if regularizer is None:
            logits = check_class_scores(
                logits_of(self(images), "model"), batch=len(images), who="model"
            )
            loss = F.cross_entropy(logits, labels)
            return RegularizedLoss(loss, logits.detach(), loss.detach(), None)
        extra: dict[str, Any] = {}
        if getattr(regularizer, "norm", None) == "gaze":
            if masks is None:
                raise ValueError(
                    "the 'gaze' norm needs masks: the training batches must be "
                    "(images, labels, masks)"
                )
            extra["mask"] = masks.to(images.dtype).reshape(len(images), 1, *masks.shape[-2:])
        out = regularizer(images, labels, **extra)
        if isinstance(out, RegularizerOutput):  # the library's regularizers
            logits = check_class_scores(
                out.logits, batch=len(images), who="the regularizer's logits"
            )
            loss = out.loss
            return RegularizedLoss(
                loss, logits.detach(), (loss - out.penalty).detach(), out.penalty.detach()
            )
        if isinstance(out, torch.Tensor) and out.dim() == 0:
            return RegularizedLoss(out, None, None, None)
        if not (
            isinstance(out, (tuple, list))
            and len(out) == 2
            and all(isinstance(part, torch.Tensor) for part in out)
        ):
            raise TypeError(
                "the regularizer must return a (logits, penalty) pair of tensors or a 0-d "
                f"loss, got {type(out).__name__}"
            )
        logits = check_class_scores(out[0], batch=len(images), who="the regularizer's logits")
        cross_entropy = F.cross_entropy(logits, labels)
        return RegularizedLoss(
            cross_entropy + out[1], logits.detach(), cross_entropy.detach(), out[1].detach()
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Cross-entropy plus the penalty of the batch; logs the parts under ``train/``."""
        images, labels, masks = self.split_training_batch(batch)
        parts = self.regularized_loss(images, labels, masks)
        self.log("train/loss", parts.loss.detach(), prog_bar=True)
        if parts.cross_entropy is not None:
            self.log("train/cross_entropy", parts.cross_entropy)
        if parts.penalty is not None:
            self.log("train/penalty", parts.penalty)
        if parts.logits is not None:
            accuracy = (parts.logits.argmax(dim=1) == labels).float().mean()
            self.log("train/accuracy", accuracy)
        cosine = getattr(self.regularizer, "last_cosine", None)
        if isinstance(cosine, torch.Tensor):
            self.log("train/cosine", cosine)
        return parts.loss


class RegularizedClassifier(RegularizedTrainingStep):
    """A ready ``LightningModule``: a network, a regularizer, AdamW.

    ``forward`` is the network; ``training_step`` comes from
    :class:`RegularizedTrainingStep`; ``validation_step`` logs ``val/loss`` and
    ``val/accuracy``. The network may return a Hugging Face ``ModelOutput`` (its
    ``.logits``) or a dict with key ``"logits"``, in training and validation, with or
    without a regularizer. With several validation dataloaders, Lightning logs each
    one's values under ``val/loss/dataloader_idx_{i}`` and
    ``val/accuracy/dataloader_idx_{i}``.

    Parameters
    ----------
    net : nn.Module
        The classifier, returning ``(B, classes)`` logits, or a ``ModelOutput`` or dict
        holding them.
    regularizer : regularizer, class or None
        A regularizer built on ``net`` (its ``model`` must be ``net``), or a class
        built as ``regularizer(net, **regularizer_kwargs)``, or ``None`` for plain
        cross-entropy.
    regularizer_kwargs : dict, optional
        Constructor arguments when ``regularizer`` is a class.
    lr, weight_decay : float
        AdamW's settings.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> from captum_regularized.regularizers import GradientNormPenalty
    >>> module = RegularizedClassifier(SimpleCNN(3, width=4), GradientNormPenalty,
    ...                                regularizer_kwargs={"epsilon": 0.1}, lr=1e-3)
    >>> module.regularizer.model is module.net, module.regularizer.norm
    (True, 'l1')
    """

    def __init__(
        self,
        net: nn.Module,
        regularizer: Any = None,
        *,
        regularizer_kwargs: dict[str, Any] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if not lr > 0 or not weight_decay >= 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {lr!r}, {weight_decay!r}")
        if regularizer_kwargs is not None and not isinstance(regularizer, type):
            raise ValueError("regularizer_kwargs is for a regularizer class; got an instance")
        self.net = net
        if isinstance(regularizer, type):
            regularizer = regularizer(net, **(regularizer_kwargs or {}))
        elif regularizer is not None:
            if not callable(regularizer):
                raise TypeError(
                    f"regularizer must be callable or a class, got {type(regularizer).__name__}"
                )
            built_on = getattr(regularizer, "model", net)
            if built_on is not net:
                raise ValueError(
                    "regularizer was built on another model than net; build it on net"
                )
        self.regularizer = regularizer
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)

    def forward(self, images: torch.Tensor) -> Any:
        """The network's output: its logits, or the ``ModelOutput`` or dict holding them."""
        return self.net(images)

    def validation_step(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> torch.Tensor:
        """Cross-entropy and accuracy of a validation batch, logged under ``val/``.

        Parameters
        ----------
        batch : Any
            A batch :meth:`split_training_batch` reads.
        batch_idx : int
            The batch's index in its dataloader.
        dataloader_idx : int
            Which validation dataloader the batch comes from; Lightning passes it when
            there are several and appends ``/dataloader_idx_{i}`` to the logged keys.

        Returns
        -------
        Tensor
            The batch's 0-d cross-entropy.
        """
        images, labels, _ = self.split_training_batch(batch)
        logits = check_class_scores(
            logits_of(self(images), "model"), batch=len(images), who="model"
        )
        loss = F.cross_entropy(logits, labels)
        self.log("val/loss", loss, sync_dist=True)
        self.log("val/accuracy", (logits.argmax(dim=1) == labels).float().mean(), sync_dist=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW over every parameter."""
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
