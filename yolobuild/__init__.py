"""yolobuild: a declarative compiler driver for deploying YOLO detectors to edge NPUs.

`yolobuild.build(recipe=..., target=..., precision=..., overrides=[...])` and `yolobuild.validate(...)`
load their machinery on first use, so `import yolobuild` stays light (no torch, no Hydra)."""
__version__ = "0.1.0"


def build(*args, **kwargs):
    """Build one job and return its Result (see yolobuild.api.build)."""
    from .api import build as _build

    return _build(*args, **kwargs)


def __getattr__(name):
    # `yolobuild.validate` is also the module of that name; it is callable (yolobuild.api.validate)
    if name in ("validate", "api", "errors"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    if name == "Result":
        from .api import Result

        return Result
    raise AttributeError(f"module 'yolobuild' has no attribute {name!r}")
