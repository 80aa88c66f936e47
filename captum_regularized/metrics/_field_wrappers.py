"""Metrics that are one field of a fuller result take that result's arguments.

``deletion_auc`` is ``deletion_curve(...).auc``, ``average_drop`` is
``confidence_change(...).drop``, ...: :func:`takes_arguments_of` gives such a
``def name(*args, **kwargs)`` wrapper the full function's signature, so ``help()``,
Sphinx and type checkers see every parameter, declared in one place only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

__all__ = ["takes_arguments_of"]

P = ParamSpec("P")
R = TypeVar("R")


def takes_arguments_of(
    full: Callable[P, Any],
) -> Callable[[Callable[..., R]], Callable[P, R]]:
    """Declare that the decorated wrapper takes exactly the arguments of ``full``.

    The wrapper keeps its own name, docstring and return annotation; its signature
    (``inspect.signature``, hence ``help()`` and Sphinx) becomes that of ``full``, and
    for type checkers its parameters are ``full``'s.

    Examples
    --------
    >>> def curve(x: float, *, scale: float = 2.0) -> tuple[float, float]:
    ...     return x, scale * x
    >>> @takes_arguments_of(curve)
    ... def area(*args: Any, **kwargs: Any) -> float:
    ...     return curve(*args, **kwargs)[1]
    >>> area(3.0, scale=0.5), str(inspect.signature(area))
    (1.5, "(x: 'float', *, scale: 'float' = 2.0) -> 'float'")
    """

    def decorate(wrapper: Callable[..., R]) -> Callable[P, R]:
        returns = inspect.signature(wrapper).return_annotation
        wrapper.__signature__ = inspect.signature(full).replace(  # type: ignore[attr-defined]
            return_annotation=returns
        )
        return wrapper

    return decorate
