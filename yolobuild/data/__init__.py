"""Generated data sets: dataset.generator.kind -> the module that writes it (each has generate())."""
from __future__ import annotations

import importlib

GENERATORS = {"shapes": "shapes", "bench": "bench"}


def generator(kind: str):
    """The module for a generator kind; None when the kind is unknown."""
    name = GENERATORS.get(kind)
    return importlib.import_module(f"{__name__}.{name}") if name else None
