"""int8 that keeps its accuracy: the reviewed list of layers kept in float (kept_float) and the searches
that build again until the measured drop is within `accuracy.max_drop` (search). Importing it imports
neither torch nor a toolchain."""
