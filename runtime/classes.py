"""Class selection by name or id (``--classes`` of det-run and det-label)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence


class ClassSpecError(ValueError):
    """A class selection names an unknown class or an id out of range; the message says which and
    lists the model's classes (the CLIs report it against their ``--classes`` flag)."""


def parse_classes(spec: str, class_names: Sequence[str]) -> list[int]:
    """``"0,raccoon"`` -> 0-based class ids, given the model's ``class_names``.

    Tokens are comma separated; a token of digits is an id, anything else a name (surrounding spaces
    ignored, empty tokens skipped). Order and repeats are kept as given.

    Raises:
        ClassSpecError: an unknown name (the nearest one is suggested) or an id out of range.
    """
    names = list(class_names)
    ids = []
    for token in (t.strip() for t in spec.split(",") if t.strip()):
        if token.isdigit():
            if int(token) >= len(names):
                raise ClassSpecError(f"class id {token} out of range (0-{len(names) - 1})")
            ids.append(int(token))
        elif token in names:
            ids.append(names.index(token))
        else:
            near = difflib.get_close_matches(token, names, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise ClassSpecError(f"unknown class '{token}'{hint} Model classes: {', '.join(names)}")
    return ids
