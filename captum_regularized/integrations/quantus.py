"""Score this package's methods (and Captum's) with Quantus metrics.

`Quantus <https://github.com/understandable-machine-intelligence-lab/Quantus>`_ calls
``explain_func(model=model, inputs=x_batch, targets=y_batch, **explain_func_kwargs)``
with numpy arrays and expects a numpy array of attributions back. :func:`explain_func`
is that adapter: the attribution method is named in ``explain_func_kwargs``::

    import quantus
    from captum_regularized.integrations.quantus import explain_func

    metric = quantus.Sparseness()
    scores = metric(model=model, x_batch=x, y_batch=y, explain_func=explain_func,
                    explain_func_kwargs={"method": "PositiveSaliency"})

This module does not import Quantus (it is only needed to run Quantus' metrics; install
the ``eval`` extra for it).
"""

from __future__ import annotations

from typing import Any, TypeAlias

import captum.attr as captum_attr
import numpy as np
import torch
from captum.attr import Attribution, LayerAttribution
from torch import nn

import captum_regularized.attr as our_attr
from captum_regularized._internal.model_outputs import LogitsOnly
from captum_regularized._internal.model_state import kept_batchnorm_statistics, model_device
from captum_regularized._internal.pixel_maps import per_pixel_map

__all__ = ["explain_func", "resolve_method"]

MethodSpec: TypeAlias = str | type | Attribution


def resolve_method(
    model: nn.Module,
    method: MethodSpec,
    *,
    layer: nn.Module | str | None = None,
    init_kwargs: dict[str, Any] | None = None,
) -> Attribution:
    """An attribution object for ``model`` from a name, a class or an instance.

    Parameters
    ----------
    model : nn.Module
        The model to explain; it may return a Hugging Face ``ModelOutput`` or a dict
        with key ``"logits"`` (Captum's own classes then get a module returning the
        logits, with ``model`` inside).
    method : str, Attribution subclass or Attribution instance
        A class name from :mod:`captum_regularized.attr` (looked up first) or
        :mod:`captum.attr`, such as ``"PositiveSaliency"`` or ``"IntegratedGradients"``;
        a class; or a ready object (returned as is).
    layer : nn.Module or str, optional
        The layer of a layer method (a module or its dotted name in ``model``).
    init_kwargs : dict, optional
        Extra constructor arguments.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(3, width=4)
    >>> type(resolve_method(model, "Saliency")).__name__
    'Saliency'
    >>> type(resolve_method(model, "LayerGradCam", layer="block3")).__name__
    'LayerGradCam'
    """
    if isinstance(method, Attribution):
        return method
    if isinstance(method, str):
        found = getattr(our_attr, method, None) or getattr(captum_attr, method, None)
        if not (isinstance(found, type) and issubclass(found, Attribution)):
            raise ValueError(
                f"method {method!r} is not an attribution class of captum_regularized.attr "
                "or captum.attr"
            )
        method = found
    if not (isinstance(method, type) and issubclass(method, Attribution)):
        raise TypeError(
            "method must be a class name, a captum Attribution subclass or an instance, "
            f"got {method!r}"
        )
    kwargs = dict(init_kwargs or {})
    # Captum's own classes need a model returning a tensor; ours read ModelOutputs too.
    ours = method.__module__.startswith("captum_regularized.")
    forward = model if ours else LogitsOnly(model)
    if issubclass(method, LayerAttribution):
        if layer is None:
            raise ValueError(f"{method.__name__} is a layer method; pass layer=")
        module = model.get_submodule(layer) if isinstance(layer, str) else layer
        return method(forward, module, **kwargs)
    return method(forward, **kwargs)


def explain_func(
    model: nn.Module,
    inputs: np.ndarray | torch.Tensor,
    targets: np.ndarray | torch.Tensor | int,
    method: MethodSpec = "Saliency",
    *,
    layer: nn.Module | str | None = None,
    init_kwargs: dict[str, Any] | None = None,
    channel_reduction: str | None = None,
    device: str | torch.device | None = None,
    **attribute_kwargs: Any,
) -> np.ndarray:
    """Quantus-style explanation function: numpy in, numpy attributions out.

    Parameters
    ----------
    model : nn.Module
        The model Quantus passes in.
    inputs : ndarray or Tensor
        Images ``(B, C, H, W)``.
    targets : ndarray, Tensor or int
        Classes to explain (one per example, or one for all).
    method : str, Attribution subclass or instance
        See :func:`resolve_method`; default Captum's ``Saliency``.
    layer : nn.Module or str, optional
        The layer of a layer method (Grad-CAM-like); its maps are resized to the
        input bilinearly.
    init_kwargs : dict, optional
        Constructor arguments of the method.
    channel_reduction : {"max", "sum", "mean"}, optional
        Collapse channels to one per pixel with
        :func:`~captum_regularized.attr.reduce_channels`; ``None`` keeps the input's
        shape when the method gives it.
    device : str or torch.device, optional
        Where to compute; default the model's device.
    **attribute_kwargs
        Passed to ``attribute`` (e.g. ``n_steps``, ``baselines``).

    Returns
    -------
    ndarray
        float32, ``(B, C, H, W)`` for input-shaped methods, else ``(B, 1, H, W)``.
        The method runs in the model's own train/eval mode; BatchNorm running
        statistics are left as found, for our methods and Captum's alike.

    Raises
    ------
    ValueError
        For an unknown method name, a layer method without ``layer``, inputs that are
        not ``(B, C, H, W)`` or targets that are neither one per example nor one for all.
    TypeError
        For a ``method`` that is no attribution class, name or instance, or a method
        that returns a tuple.

    Examples
    --------
    >>> from captum_regularized.models import SimpleCNN
    >>> model = SimpleCNN(3, width=4)
    >>> x = np.random.rand(2, 3, 8, 8).astype(np.float32)
    >>> explain_func(model, x, np.array([0, 2]), method="PositiveSaliency").shape
    (2, 3, 8, 8)
    >>> explain_func(model, x, np.array([0, 2]), method="LayerGradCam", layer="block3").shape
    (2, 1, 8, 8)
    """
    attribution = resolve_method(model, method, layer=layer, init_kwargs=init_kwargs)
    device = torch.device(device) if device is not None else model_device(model)
    images = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, torch.Tensor) else inputs)
    if images.dim() != 4:
        raise ValueError(
            f"inputs must be an image batch (B, C, H, W), got shape {tuple(images.shape)}"
        )
    images = images.to(device=device, dtype=torch.float32).detach().requires_grad_(True)
    batch, _, height, width = images.shape
    classes = torch.as_tensor(
        np.asarray(targets) if not isinstance(targets, torch.Tensor) else targets
    ).to(device=device, dtype=torch.long).reshape(-1)
    if classes.numel() == 1:
        classes = classes.expand(batch)
    if classes.numel() != batch:
        raise ValueError(
            f"targets must hold one class per example ({batch}) or one for all, "
            f"got {classes.numel()}"
        )
    # Quantus may hand over a model in train mode: explaining it must not move its
    # BatchNorm statistics, whichever method (ours or Captum's) runs.
    with kept_batchnorm_statistics(model):
        maps = attribution.attribute(images, target=classes.clone(), **attribute_kwargs)
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"the method returned {type(maps).__name__}, expected one tensor")
    maps = maps.detach()
    if channel_reduction is not None or tuple(maps.shape[2:]) != (height, width):
        maps = per_pixel_map(
            maps, batch, (height, width), channel_reduction=channel_reduction or "max"
        )
    return maps.float().cpu().numpy()
