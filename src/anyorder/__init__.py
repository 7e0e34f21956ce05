"""anyorder: any-order autoregressive image generation (RAR, RandAR, LPD) on one decoder-only transformer.

The package is layered, imports flowing down only: ``io`` (safe I/O, configs) -> ``nn`` (transformer,
KV cache, RoPE, orders) -> ``models`` / ``tokenizers`` -> ``hub`` -> ``data`` / ``sampling`` ->
``editing`` / ``evaluation`` -> ``training`` -> applications (``demo``, ``app``, ``cli``). This
file only re-exports the everyday API.
"""

from anyorder.hub import from_pretrained, load_official, save_pretrained
from anyorder.models import LPD, RAR, LPDConfig, RandAR, RandARConfig, RARConfig, build_model
from anyorder.sampling import generate

__version__ = "0.2.0"

__all__ = ["RAR", "RARConfig", "RandAR", "RandARConfig", "LPD", "LPDConfig", "build_model", "from_pretrained",
           "load_official", "save_pretrained", "generate", "__version__"]
