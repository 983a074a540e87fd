"""exportgate: an export-control access gateway for GPU job schedulers."""

__version__ = "0.1.0"
