"""Rockchip RKNN-Toolkit2: compile a .rknn and run the PC simulator, inside its own environment."""
