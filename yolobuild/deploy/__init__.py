"""What a build ships for the application: deploy.json, the standalone infer.py runner, golden samples,
and the timing of the artifact (host runtimes here, a script for the board)."""
