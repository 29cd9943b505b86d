"""What every layer may use: atomic file writes, one-line messages, registries, paths, malloc tuning."""
