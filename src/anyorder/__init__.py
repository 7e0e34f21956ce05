"""anyorder: any-order autoregressive image generation (RAR and RandAR) on one decoder-only transformer."""

from anyorder.checkpoints import build_model, from_pretrained, load_official, save_pretrained
from anyorder.randar import RandAR, RandARConfig
from anyorder.rar import RAR, RARConfig
from anyorder.sampling import generate

__version__ = "0.1.0"

__all__ = ["RAR", "RARConfig", "RandAR", "RandARConfig", "build_model", "from_pretrained", "load_official",
           "save_pretrained", "generate", "__version__"]
