"""Local HTTP servers that speak real protocols, for tests and benchmarks (nothing here reaches the network)."""
