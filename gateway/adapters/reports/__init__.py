"""Reports rendered for people and for programs: one self-contained HTML file (charts as inline SVG made by
matplotlib), CSV, and JSON; each carries the same numbers (gateway/core/reports computes them)."""
