"""anyorder: any-order autoregressive image generation (RAR and RandAR) on one decoder-only transformer."""

__version__ = "0.1.0"
