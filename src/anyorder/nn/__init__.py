"""Layer 1: the shared decoder-only transformer, its static KV cache, 2D RoPE and token orders."""
