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
run stops before writing anything into it. The argument types and these checks live in
:mod:`captum_regularized.cli_support`, shared with the ``reproduce`` command
(:mod:`captum_regularized.study.command`). Importing this module changes nothing
(matplotlib's backend included); :func:`main` switches matplotlib to ``Agg`` for the
command it runs.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib

from captum_regularized.cli_support import (
    EXIT_BAD_ARGUMENTS,
    UsageError,
    check_device,
    check_output_dir,
    output_dir,
    seed_argument,
)
from captum_regularized.demo import run_demo
from captum_regularized.study.command import add_reproduce_parser, run_reproduce

__all__ = [
    "EXIT_BAD_ARGUMENTS",
    "UsageError",
    "check_device",
    "check_output_dir",
    "main",
    "output_dir",
    "seed_argument",
]


class _OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_ARGUMENTS)


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
    add_reproduce_parser(commands)
    return parser


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
    # A command only writes image files: no figure windows, whatever the session's backend.
    matplotlib.use("Agg")
    # Captum's notes about its own bookkeeping are noise in a command's output.
    warnings.filterwarnings("ignore", message=".*required_grads has been set automatic")
    warnings.filterwarnings("ignore", message=".*Setting backward hooks on ReLU")
    try:
        if args.command == "demo":
            device = check_device(args.device)
            with output_dir(args.out) as out:
                run_demo(
                    out, quick=args.quick, device=device, seed=args.seed,
                    progress=not args.no_progress,
                )
            print(f"wrote {out / 'report.md'}")
        elif args.command == "reproduce":
            print(f"wrote {run_reproduce(args)}")
    except UsageError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return EXIT_BAD_ARGUMENTS
    return 0
