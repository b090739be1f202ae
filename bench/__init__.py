"""Benchmarks: ratios against the tools a user would pick instead, measured side by side."""
