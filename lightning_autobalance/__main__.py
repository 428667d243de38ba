"""``python -m lightning_autobalance``: the Hydra command-line app (see :mod:`lightning_autobalance.cli`)."""

from lightning_autobalance.cli import main

if __name__ == "__main__":
    main()
