"""Helpers shared by the suites."""
