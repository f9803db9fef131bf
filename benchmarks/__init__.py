"""Benchmarks of det-toolkit (run as scripts: ``python benchmarks/NAME.py --help``)."""
