"""cupyx of the CuPy stand-in (only what minitx uses)."""
