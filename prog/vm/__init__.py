"""Progs that drive VMs."""
