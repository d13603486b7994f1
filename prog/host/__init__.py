"""Progs that drive hosts."""
