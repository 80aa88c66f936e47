"""Metrics that are one field of a fuller result (``deletion_auc`` is
``deletion_curve(...).auc``) take that result's arguments, declared in one place."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

__all__ = ["takes_arguments_of"]

P = ParamSpec("P")
R = TypeVar("R")


def takes_arguments_of(full: Callable[P, Any]) -> Callable[[Callable[..., R]], Callable[P, R]]:
    """Give a ``def name(*args, **kwargs)`` wrapper the signature of ``full``.

    It keeps its own name, docstring and return annotation.
    """

    def decorate(wrapper: Callable[..., R]) -> Callable[P, R]:
        returns = inspect.signature(wrapper).return_annotation
        wrapper.__signature__ = inspect.signature(full).replace(  # type: ignore[attr-defined]
            return_annotation=returns
        )
        return wrapper

    return decorate
