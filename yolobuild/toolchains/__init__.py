"""Toolchain packages, one per vendor: `<name>/toolchain.yaml` (read as data by registry.py) + `steps.py`.

Shared mechanisms live beside them: `envs.py` + `worker.py` (isolated environments and their
protocol) and `handoff/` (vendor bundles). Importing this package imports nothing else.
"""
