"""The shared hand-off mechanism: one bundle format for every vendor whose compiler cannot run here."""
