"""Layer 6: run configs, the shared training loop, and the small fitting loop of the demo's helper networks."""
