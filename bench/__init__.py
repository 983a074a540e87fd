"""Load and micro benchmarks, each reporting a ratio against a baseline run alongside."""
