"""Where the shipped data folders live: inside the package in an installed wheel, beside it in a checkout.

The repository keeps `recipes/` and `schemas/` at its top level; the wheel maps them into the
package (`yolobuild/recipes`, `yolobuild/schemas`), so both layouts resolve here and nowhere else.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def shipped(name: str) -> Path:
    inside = PACKAGE_DIR / name
    return inside if inside.is_dir() else PACKAGE_DIR.parent / name


RECIPES_DIR = shipped("recipes")
SCHEMAS_DIR = shipped("schemas")
ASSETS_DIR = PACKAGE_DIR / "assets"
