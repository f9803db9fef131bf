"""``python -m train`` = ``det-train`` (also the entry point for ``torchrun -m train``)."""

from train.cli import train_cli

if __name__ == "__main__":
    train_cli()
