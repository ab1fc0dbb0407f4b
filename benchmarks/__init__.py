"""Benchmarks: bnlab against the built-in, measured interleaved in one run.

Run them all with ``python -m benchmarks``; each module also runs alone.
"""
