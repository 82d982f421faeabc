"""Sophgo TPU-MLIR: compile a .bmodel and run it on the cmodel emulator, inside its own Python 3.10 environment."""
