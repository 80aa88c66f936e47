"""``python -m captum_regularized`` runs the same command line as ``captum-regularized``."""

from captum_regularized.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
