"""``python -m det_toolkit.train`` = ``det-train`` (also the entry point for ``torchrun -m det_toolkit.train``)."""

from det_toolkit.train.cli import train_cli

if __name__ == "__main__":
    train_cli()
