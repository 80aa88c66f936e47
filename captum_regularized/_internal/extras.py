"""The one way an adapter module imports the optional package it is built on.

The adapters to torchmetrics and Lightning need an optional extra that
``import captum_regularized`` never imports. Each imports it inside
:func:`optional_extra`, so that a missing package is an ``ImportError`` naming the
module, the package and the ``pip install`` line that brings it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["optional_extra"]


@contextlib.contextmanager
def optional_extra(module: str, package: str, extra: str = "lightning") -> Iterator[None]:
    """Re-raise an ``ImportError`` of the block as one that says what to install.

    Parameters
    ----------
    module : str
        The adapter module that needs the package (its ``__name__``).
    package : str
        The package's name as users know it (``"Lightning"``, ``"torchmetrics"``).
    extra : str
        The extra of ``captum-regularized`` that installs it.

    Examples
    --------
    >>> with optional_extra("captum_regularized.metrics.torchmetrics", "torchmetrics"):
    ...     import captum_regularized_absent_package
    Traceback (most recent call last):
    ...
    ImportError: captum_regularized.metrics.torchmetrics needs torchmetrics; install it with \
pip install "captum-regularized[lightning]"
    """
    try:
        yield
    except ImportError as error:
        raise ImportError(
            f"{module} needs {package}; install it with "
            f'pip install "captum-regularized[{extra}]"'
        ) from error
