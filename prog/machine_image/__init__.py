"""Progs that drive machine images and their versions."""
