"""The one way an adapter module imports the optional package it is built on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["optional_extra"]


@contextlib.contextmanager
def optional_extra(module: str, package: str, extra: str = "lightning") -> Iterator[None]:
    """Re-raise an ``ImportError`` of the block as one naming ``module``, ``package`` and
    the ``pip install`` line of the ``extra`` that brings it.

    Examples
    --------
    >>> with optional_extra("captum_regularized.metrics.torchmetrics", "torchmetrics"):
    ...     import captum_regularized_absent_package  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ImportError: captum_regularized.metrics.torchmetrics needs torchmetrics; install it with ...
    """
    try:
        yield
    except ImportError as error:
        raise ImportError(
            f"{module} needs {package}; install it with "
            f'pip install "captum-regularized[{extra}]"'
        ) from error
