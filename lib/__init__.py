"""Infrastructure shared by the progs, the daemon, the API and the CLI."""
