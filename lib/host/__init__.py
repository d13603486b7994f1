"""Host agent: code the control plane copies to a host and runs there (standard library only)."""
