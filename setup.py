"""Packages for setuptools: yolobuild's own, plus the top-level recipes/ and schemas/ folders shipped
inside the wheel as yolobuild/recipes and yolobuild/schemas (metadata and data files: pyproject.toml)."""
from setuptools import find_packages, setup

DATA = {"yolobuild.recipes": "recipes", "yolobuild.schemas": "schemas"}

setup(packages=find_packages(include=["yolobuild", "yolobuild.*"]) + list(DATA), package_dir=DATA)
