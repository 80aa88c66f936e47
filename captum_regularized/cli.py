"""Command line: ``captum-regularized`` and ``python -m captum_regularized``.

Sub-commands
------------
demo
    The main job: train a small CNN on the synthetic benchmark and write a figure,
    ``metrics.json`` and ``report.md`` comparing attribution methods.
reproduce
    The reproduction study of the four papers: ``report.md``, ``results.json`` and
    figures with a held/not-held verdict per claim (see :mod:`captum_regularized.study`).

Bad arguments exit with code 2 and a one-line reason. Arguments are checked before the
``--out`` folder is created, and a folder the command created is removed again when the
run stops before writing anything into it.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

EXIT_BAD_ARGUMENTS = 2


class _OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_ARGUMENTS)


class UsageError(Exception):
    """A problem with the user's arguments or environment, reported in one line."""


def seed_argument(text: str) -> int:
    """Type of every ``--seed`` option: a non-negative integer.

    A bad value is an ``argparse`` error, so the command exits with code 2 and one line.

    Examples
    --------
    >>> seed_argument("3")
    3
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="captum-regularized",
        description="Interpretable gradients for image classifiers, as a Captum plugin.",
    )
    from captum_regularized import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", parser_class=_OneLineParser)
    demo = commands.add_parser(
        "demo",
        help="train a small CNN on synthetic shapes and compare attribution maps",
        description="Train SimpleCNN on SyntheticShapes and write a figure, metrics.json "
        "and report.md comparing attribution methods against ground-truth masks.",
    )
    demo.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder")
    demo.add_argument("--quick", action="store_true", help="a smaller, faster run")
    demo.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run")
    demo.add_argument("--seed", type=seed_argument, default=0, help="seed for data and training")
    demo.add_argument(
        "--no-progress", action="store_true", help="hide the training progress bars"
    )
    from captum_regularized.study.command import add_reproduce_parser

    add_reproduce_parser(commands)
    return parser


def check_output_dir(path: Path) -> Path:
    """Create ``path`` if needed and make sure a file can be written there.

    Raises
    ------
    UsageError
        When the folder cannot be created or written to.
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
    """Return ``name`` if usable; ``cuda`` without a GPU is a ``UsageError``."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine")
    return name


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code.

    Examples
    --------
    >>> main(["demo", "--device", "cuda"]) if not __import__("torch").cuda.is_available() else 2
    2
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_ARGUMENTS
    # Captum's notes about its own bookkeeping are noise in a command's output.
    warnings.filterwarnings("ignore", message=".*required_grads has been set automatic")
    warnings.filterwarnings("ignore", message=".*Setting backward hooks on ReLU")
    try:
        if args.command == "demo":
            from captum_regularized.demo import run_demo

            device = check_device(args.device)
            with output_dir(args.out) as out:
                run_demo(
                    out, quick=args.quick, device=device, seed=args.seed,
                    progress=not args.no_progress,
                )
            print(f"wrote {out / 'report.md'}")
        elif args.command == "reproduce":
            from captum_regularized.study.command import run_reproduce

            print(f"wrote {run_reproduce(args)}")
    except UsageError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return EXIT_BAD_ARGUMENTS
    return 0
