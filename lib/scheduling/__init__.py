"""The strand engine: leases, steps, and (later) the dispatcher that drives them."""
