"""The ``reproduce`` sub-command of ``captum-regularized`` (arguments and their checks)."""

from __future__ import annotations

import argparse
from pathlib import Path

from captum_regularized.cli_support import seed_argument
from captum_regularized.datasets.fashion_mnist import fashion_mnist_missing
from captum_regularized.study.study_data import DATA_SETS, DEFAULT_FASHION_MNIST_ROOT

__all__ = ["add_reproduce_parser", "data_argument", "run_reproduce"]


def add_reproduce_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``reproduce`` and its options to the CLI's sub-commands.

    Examples
    --------
    >>> parser = argparse.ArgumentParser()
    >>> _ = add_reproduce_parser(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["reproduce", "--quick", "--seeds", "2"])
    >>> args.quick, args.seeds, args.out
    (True, 2, PosixPath('reproduce-out'))
    """
    reproduce = commands.add_parser(
        "reproduce",
        help="re-run the four papers' protocols and report which claims held",
        description="Train the models each paper needs, run its evaluation protocol over "
        "several seeds and write report.md, results.json and figures, with a held/not-held "
        "verdict per claim and data set. Without --data: SyntheticShapes (harder "
        "configuration) and Fashion-MNIST (when its files are found), side by side.",
    )
    reproduce.add_argument("--quick", action="store_true",
                           help="one seed, tiny models, SyntheticShapes only unless --data or "
                           "--data-root is given (a CI-sized run; verdicts are noise)")
    reproduce.add_argument("--out", type=Path, default=Path("reproduce-out"), help="output folder")
    reproduce.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run")
    reproduce.add_argument("--seed", type=seed_argument, default=0, help="first seed")
    reproduce.add_argument("--seeds", type=int, default=None,
                           help="number of seeds (default: 3, or 1 with --quick)")
    reproduce.add_argument("--data", default=None, metavar="synthetic|fashion-mnist|FOLDER",
                           help="run one data set only: 'synthetic', 'fashion-mnist', or an "
                           "image folder (one sub-folder per class; mask metrics are "
                           "skipped); default: both named data sets")
    reproduce.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                           help="folder of the four Fashion-MNIST IDX files (default: "
                           f"{DEFAULT_FASHION_MNIST_ROOT}, where Debian's "
                           "dataset-fashion-mnist installs them)")
    reproduce.add_argument("--no-cache", action="store_true",
                           help="train every model afresh and keep no checkpoint (default: "
                           "trained models are kept in $XDG_CACHE_HOME/captum_regularized/"
                           "study, ~/.cache/... by default, and reused by a run with the "
                           "same training settings)")
    reproduce.add_argument("--no-progress", action="store_true",
                           help="hide the training progress bars (stage lines still print)")
    return reproduce


def _command_line(args: argparse.Namespace) -> str:
    """The run's options as a ``captum-regularized reproduce ...`` line (for the record)."""
    words = ["captum-regularized", "reproduce"] + (["--quick"] if args.quick else [])
    words += ["--device", args.device, "--seed", str(args.seed)]
    for flag, value in (("--seeds", args.seeds), ("--data", args.data),
                        ("--data-root", getattr(args, "data_root", None))):
        if value is not None:
            words += [flag, str(value)]
    if getattr(args, "no_cache", False):
        words.append("--no-cache")
    return " ".join(words)


def data_argument(value: str | None) -> str | Path | None:
    """``--data`` as ``run_study`` takes it: a data set name or an image folder.

    Examples
    --------
    >>> data_argument("fashion-mnist"), data_argument(None)
    ('fashion-mnist', None)
    """
    from captum_regularized.cli_support import UsageError

    if value is None or value in DATA_SETS:
        return value
    folder = Path(value)
    if not folder.is_dir():
        raise UsageError(
            f"--data {value}: not a folder; expected one of {', '.join(DATA_SETS)} or an "
            "image folder"
        )
    return folder


def run_reproduce(args: argparse.Namespace) -> Path:
    """Check the arguments (before ``--out`` is created), run the study, return the report.

    Raises
    ------
    captum_regularized.cli_support.UsageError
        For a bad ``--seeds``, ``--data``, ``--data-root``, ``--out`` or ``--device``.
    """
    from captum_regularized.cli_support import UsageError, check_device, output_dir

    if args.seeds is not None and args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    data = data_argument(args.data)
    if args.data_root is not None and not args.data_root.is_dir():
        raise UsageError(f"--data-root {args.data_root}: not a folder")
    if data == "fashion-mnist":
        root = DEFAULT_FASHION_MNIST_ROOT if args.data_root is None else args.data_root
        missing = fashion_mnist_missing(root)
        if missing:
            raise UsageError(f"--data fashion-mnist: {missing} (pass --data-root DIR)")
    device = check_device(args.device)

    from captum_regularized.study.model_zoo import default_checkpoint_cache
    from captum_regularized.study.runner import run_study
    from captum_regularized.study.settings import FULL, QUICK

    settings = QUICK if args.quick else FULL
    if args.seeds is not None:
        settings = settings.with_seeds(args.seeds)
    with output_dir(args.out) as out:
        try:
            run_study(out, settings=settings, quick=args.quick, device=device, seed=args.seed,
                      data=data, data_root=args.data_root, progress=not args.no_progress,
                      command=_command_line(args),
                      cache=None if getattr(args, "no_cache", False)
                      else default_checkpoint_cache())
        except ValueError as error:
            if str(error).startswith("--data"):
                raise UsageError(str(error)) from None
            raise
    return out / "report.md"
