"""Cambricon MLU220 / MLU270 (torch_mlu 1.x + genoff): a hand-off bundle for the vendor's docker."""
