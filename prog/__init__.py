"""Progs: the state machines that strands run. `base.py` is the DSL; one prog a file."""
