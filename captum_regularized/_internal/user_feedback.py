"""What the attribution methods tell the user while they work.

A ``tqdm`` progress bar for calls that run many model passes (:func:`show_progress`:
``progress=True`` always, ``False`` never, ``None`` above :data:`PROGRESS_THRESHOLD`
passes on a terminal), and a warning for a model in train mode
(:func:`warn_if_training`), pointing at the user's line. Nothing is switched.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import captum
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.dropout import _DropoutNd

from captum_regularized._internal.model_state import find_module

__all__ = [
    "PROGRESS_THRESHOLD", "ProgressBar", "check_progress", "progress_bar", "show_progress",
    "train_mode_modules", "warn_if_training",
]

PROGRESS_THRESHOLD = 64
"""``progress=None`` shows a bar when a call will run more model passes than this."""

_DROP_PATH_NAMES = ("DropPath", "StochasticDepth")
"""Classes of timm's and torchvision's stochastic depth, recognised by name."""

_OUR_DIRS = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
    os.path.dirname(os.path.abspath(captum.__file__ or "captum")) + os.sep,
)
"""Files of these packages are skipped when a warning looks for the user's line."""


def check_progress(progress: object) -> None:
    """Raise a ``TypeError`` unless ``progress`` is ``None``, ``True`` or ``False``."""
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be None, True or False, got {type(progress).__name__}")


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr is not None and sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def show_progress(progress: bool | None, passes: int) -> bool:
    """Whether a call that will run ``passes`` model passes shows a progress bar."""
    check_progress(progress)
    if progress is None:
        return passes > PROGRESS_THRESHOLD and _stderr_is_terminal()
    return progress


class ProgressBar:
    """A ``tqdm`` bar on stderr of ``total`` units, or nothing when not ``show``."""

    def __init__(self, show: bool, total: int, desc: str, unit: str) -> None:
        self._bar: Any = None
        if show:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr,
                             dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        if self._bar is not None:
            self._bar.update(n)

    def close(self, finished: bool = True) -> None:
        """Close the bar; when ``finished``, an upper-bound total becomes what was done."""
        if self._bar is not None:
            if finished and self._bar.n != self._bar.total:
                self._bar.total = self._bar.n
                self._bar.refresh()
            self._bar.close()
            self._bar = None


@contextlib.contextmanager
def progress_bar(show: bool, total: int, desc: str, unit: str) -> Iterator[ProgressBar]:
    """A :class:`ProgressBar` closed when the block ends, also when it raises."""
    bar = ProgressBar(show, total, desc, unit)
    try:
        yield bar
    except BaseException:
        bar.close(finished=False)
        raise
    bar.close()


def _mode_dependent(module: nn.Module) -> bool:
    """Whether ``module`` computes something else in train mode than in eval mode."""
    if isinstance(module, _NormBase):  # BatchNorm, SyncBatchNorm, tracked InstanceNorm
        return module.running_mean is not None  # without running stats: same in both modes
    if isinstance(module, _DropoutNd):
        return module.p > 0
    if type(module).__name__ in _DROP_PATH_NAMES:
        rate = getattr(module, "drop_prob", getattr(module, "p", 0.0))
        return isinstance(rate, (int, float)) and rate > 0
    return False


def train_mode_modules(model: nn.Module | None) -> list[str]:
    """Names of the submodules in train mode that behave differently there (norms with
    running statistics, Dropout with ``p > 0``, stochastic depth).

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout(0.5))
    >>> train_mode_modules(net), train_mode_modules(net.eval()), train_mode_modules(None)
    (['1: BatchNorm1d', '2: Dropout'], [], [])
    """
    if model is None:
        return []
    return [
        f"{name or '(the model)'}: {type(module).__name__}"
        for name, module in model.named_modules()
        if module.training and _mode_dependent(module)
    ]


def _user_stacklevel() -> int:
    """``stacklevel`` of the first frame outside this package and Captum (the user's line)."""
    frame = sys._getframe(1)  # the function that calls warnings.warn: its stacklevel 1
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_OUR_DIRS):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def warn_if_training(forward_func: Callable[..., Any], who: str) -> None:
    """Warn when the model behind ``forward_func`` has train-mode BatchNorm or Dropout.

    The warning points at the first line outside this package and Captum.

    Examples
    --------
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_if_training(nn.Sequential(nn.Dropout(0.5)), "Demo")
    >>> str(caught[0].message)[:40]
    'Demo: the model has modules in train mod'
    """
    names = train_mode_modules(find_module(forward_func))
    if not names:
        return
    listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    warnings.warn(
        f"{who}: the model has modules in train mode ({listed}); there BatchNorm normalises "
        "with the batch's own statistics and Dropout drops units at random, so the maps differ "
        "from the eval-mode model's (often by orders of magnitude) and between calls. "
        "Call model.eval() before explaining it (the model is explained in the mode it "
        "is given and left in that mode).",
        UserWarning,
        stacklevel=_user_stacklevel(),
    )
