"""VastAI VA1 (vamc / vamp): a hand-off bundle for the vendor's docker."""
