"""What every ``captum-regularized`` sub-command shares: argument types and run checks.

:mod:`captum_regularized.cli` (the entry point and the ``demo`` command) and
:mod:`captum_regularized.study.command` (the ``reproduce`` command) both import from
here; neither imports the other's helpers, so the command line has no import cycle.
Everything here is standard library only (``torch`` is imported when a device is checked).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "EXIT_BAD_ARGUMENTS",
    "UsageError",
    "check_device",
    "check_output_dir",
    "output_dir",
    "seed_argument",
]

EXIT_BAD_ARGUMENTS = 2
"""Exit code of a command whose arguments or environment are refused."""


class UsageError(Exception):
    """A problem with the user's arguments or environment, reported in one line."""


def seed_argument(text: str) -> int:
    """Type of every ``--seed`` option: a non-negative integer.

    A bad value is an ``argparse`` error, so the command exits with code 2 and one line.

    Examples
    --------
    >>> seed_argument("3")
    3
    >>> seed_argument("-1")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be >= 0, got -1
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def check_output_dir(path: Path) -> Path:
    """Create ``path`` if needed and make sure a file can be written there.

    Raises
    ------
    UsageError
        When the folder cannot be created or written to.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp()) / "new"
    >>> check_output_dir(folder) == folder and folder.is_dir()
    True
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise UsageError(f"--out {path}: cannot write there ({error.strerror or error})") from None
    return path


@contextlib.contextmanager
def output_dir(path: Path) -> Iterator[Path]:
    """:func:`check_output_dir` for the length of a run, tidied up if the run fails.

    When the block raises, the folders this call created (``path`` and any missing
    parents) are removed again as long as they are still empty; a folder that existed
    before is never removed. Check everything that can be checked (the device, the
    arguments) before entering.

    Examples
    --------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "run" / "one"
    >>> try:
    ...     with output_dir(out):
    ...         raise UsageError("the run failed before writing anything")
    ... except UsageError:
    ...     pass
    >>> out.parent.exists()
    False
    """
    path = Path(path)
    created = []
    ancestor = path.absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        created.append(ancestor)
        ancestor = ancestor.parent
    try:
        yield check_output_dir(path)
    except BaseException:
        for folder in created:  # deepest first
            try:
                folder.rmdir()  # only succeeds on an empty folder
            except OSError:
                break
        raise


def check_device(name: str) -> str:
    """Return ``name`` if usable; ``cuda`` without a GPU is a :class:`UsageError`.

    Examples
    --------
    >>> check_device("cpu")
    'cpu'
    """
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine")
    return name
