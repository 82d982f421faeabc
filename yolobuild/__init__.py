"""yolobuild: a declarative compiler driver for deploying YOLO detectors to edge NPUs."""
__version__ = "0.1.0"
