"""I/O adapters, one kind of I/O each, behind a Protocol."""
