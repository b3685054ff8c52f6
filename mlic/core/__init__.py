"""Infrastructure every layer uses: the run config, the typed registry, atomic file writes, the error types."""
