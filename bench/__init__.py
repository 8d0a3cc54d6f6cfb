"""Benchmarks: runnable scripts whose figures go into evaluation_results.md."""
