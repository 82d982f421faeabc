"""Host-side runtime pieces shared by every target: preprocessing, decode, NMS, mAP (numpy only)."""
