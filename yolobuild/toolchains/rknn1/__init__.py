"""Rockchip RKNN-Toolkit 1.7 (RK1808 / RV1126 / RV1109): a hand-off bundle for the vendor's docker."""
