"""Examples of stages written with the public API only."""
