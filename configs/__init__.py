"""Configuration files shipped with det-toolkit (``det_toolkit.configs``): tracker settings and
example data configs. Read them with :func:`config_path`."""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent


def config_path(name: str) -> Path:
    """Path of a shipped config file, e.g. ``config_path("tracker/deepsort.yaml")``.

    Raises:
        FileNotFoundError: no such shipped file (the message lists the ones there are).
    """
    path = CONFIG_DIR / name
    if not path.is_file():
        known = sorted(str(p.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.rglob("*.yaml"))
        raise FileNotFoundError(f"no shipped config '{name}'; shipped: {', '.join(known)}")
    return path
