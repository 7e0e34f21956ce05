"""Image tokenizers: images in [0, 1] <-> code grids [B, h, w]."""

from anyorder.tokenizers.base import ImageTokenizer
from anyorder.tokenizers.demo_vq import DemoVQ, DemoVQConfig
from anyorder.tokenizers.llamagen_vq import LlamaGenVQ, LlamaGenVQConfig
from anyorder.tokenizers.maskgit_vqgan import MaskGITVQGAN, MaskGITVQGANConfig
from anyorder.tokenizers.official import load_official_tokenizer

__all__ = ["ImageTokenizer", "DemoVQ", "DemoVQConfig", "LlamaGenVQ", "LlamaGenVQConfig", "MaskGITVQGAN",
           "MaskGITVQGANConfig", "load_official_tokenizer"]
