"""Helpers for tests and benchmarks of AIMA and its plugins."""
