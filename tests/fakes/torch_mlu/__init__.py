"""A small fake of Cambricon's torch_mlu 1.x for tests: records calls, checks names and values."""
from record import record  # noqa: F401

record("import torch_mlu")
