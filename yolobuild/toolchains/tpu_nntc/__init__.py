"""Sophgo BM1684 with the legacy tpu-nntc SDK: a hand-off bundle for the vendor's docker."""
