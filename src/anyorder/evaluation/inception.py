"""The Inception network of the ADM evaluator, built from torch-fidelity's port of the TensorFlow graph.

The ADM evaluator (and so every FID in the RAR / RandAR papers) runs TensorFlow's 2015-12-05 Inception
graph ``classify_image_graph_def.pb``. torch-fidelity ships a PyTorch port of that graph, its building
blocks patched where TensorFlow differs from torchvision (average pooling without padded zeros, max pooling
in the last block) and a bilinear resize that reproduces TensorFlow 1.x, plus the graph's weights converted
to a state dict (``weights-inception-2015-12-05-6726825d.pth``). We assemble the network from those blocks
(keeping torch-fidelity's parameter names, so its weight file loads strictly) and read three outputs:

* ``pool``    ``[N, 2048]``: ``pool_3``, for FID, precision / recall;
* ``spatial`` ``[N, 7 * 17 * 17 = 2023]``: the first 7 channels of ``mixed_6/conv`` (the 1x1 branch of the
  fourth 17x17 block, ``Mixed_6d.branch1x1``), flattened in TensorFlow's ``H, W, C`` order, for sFID;
* ``logits``  ``[N, 1008]``: ``pool @ W`` without the bias (what ADM feeds to the softmax), for the IS.

Inputs are images with values in ``[0, 255]`` (uint8 or float) at any resolution: they are resized to
299x299 as the TF graph does and mapped to ``[-1, 1]``. Nothing downloads: the weights come from a local
file (``--inception-weights PATH`` or ``$ANYORDER_INCEPTION_WEIGHTS``).

torch-fidelity's package ``__init__`` imports every extractor, some of which need torchvision; the
Inception module itself needs only torch. When torchvision is missing we import that one module with a
bare parent package (see :func:`_fidelity_inception_module`), so ``pip install --no-deps torch-fidelity``
is enough.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import torch
from torch import Tensor, nn

from anyorder.io.checkpoint import check_state_dict, load_state_dict

__all__ = [
    "INCEPTION_WEIGHTS_ENV",
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_URL",
    "POOL_DIM",
    "SPATIAL_DIM",
    "NUM_LOGITS",
    "InceptionV3",
    "resolve_inception_weights",
    "load_inception",
]

INCEPTION_WEIGHTS_ENV = "ANYORDER_INCEPTION_WEIGHTS"
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"
POOL_DIM = 2048
SPATIAL_CHANNELS = 7  # ADM keeps the first 7 of the 192 channels of mixed_6/conv
SPATIAL_SIDE = 17
SPATIAL_DIM = SPATIAL_CHANNELS * SPATIAL_SIDE * SPATIAL_SIDE
NUM_LOGITS = 1008  # the TF graph's softmax has 1008 outputs (1000 classes + unused)
INPUT_SIZE = 299

_LIB = "torch_fidelity"
_LIB_MODULE = "torch_fidelity.feature_extractor_inceptionv3"
_LIB_RESIZE = "torch_fidelity.interpolate_compat_tensorflow"


@functools.cache
def _fidelity_inception_module() -> tuple[types.ModuleType, types.ModuleType]:
    """``torch_fidelity.feature_extractor_inceptionv3`` and its TF-compatible resize module.

    Tries a normal import; if the package ``__init__`` fails only because torchvision is missing, imports
    the two torch-only modules under a bare stand-in for the package, then removes the stand-in so a
    later ``import torch_fidelity`` (with torchvision installed) runs the real ``__init__``.
    """
    try:
        return importlib.import_module(_LIB_MODULE), importlib.import_module(_LIB_RESIZE)
    except ModuleNotFoundError as e:
        if e.name is not None and e.name.split(".")[0] == _LIB:
            raise ImportError(
                "the Inception feature network comes from torch-fidelity, which is not installed: "
                "pip install --no-deps torch-fidelity==0.4.0 (--no-deps: it needs only torch for this)"
            ) from e
        if e.name is None or e.name.split(".")[0] != "torchvision":
            raise ImportError(f"torch-fidelity could not be imported: {e}") from e
    spec = importlib.util.find_spec(_LIB)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"cannot locate the {_LIB} package")
    stand_in = types.ModuleType(_LIB)
    stand_in.__path__ = list(spec.submodule_search_locations)
    stand_in.__spec__ = spec
    previous = sys.modules.get(_LIB)
    sys.modules[_LIB] = stand_in
    try:
        return importlib.import_module(_LIB_MODULE), importlib.import_module(_LIB_RESIZE)
    finally:
        if previous is None:
            sys.modules.pop(_LIB, None)
        else:
            sys.modules[_LIB] = previous


class InceptionV3(nn.Module):
    """TensorFlow's 2015 Inception-v3 graph as ADM uses it; parameter names follow torch-fidelity.

    ``forward(images)`` takes ``[B, 3, H, W]`` with values in ``[0, 255]`` and returns a dict with
    ``pool [B, 2048]``, ``spatial [B, 2023]`` and ``logits [B, 1008]`` (float32).
    Build it with random weights here; load published weights with :func:`load_inception`.
    """

    def __init__(self) -> None:
        super().__init__()
        lib, resize = _fidelity_inception_module()
        self._resize = resize.interpolate_bilinear_2d_like_tensorflow1x
        conv = lib.BasicConv2d
        # stem: 299 -> 35x35x192
        self.Conv2d_1a_3x3 = conv(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = conv(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = conv(32, 64, kernel_size=3, padding=1)
        self.MaxPool_1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = conv(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = conv(80, 192, kernel_size=3)
        self.MaxPool_2 = nn.MaxPool2d(kernel_size=3, stride=2)
        # 35x35 blocks (TF: mixed, mixed_1, mixed_2), reduction to 17x17 (mixed_3)
        self.Mixed_5b = lib.InceptionA(192, pool_features=32)
        self.Mixed_5c = lib.InceptionA(256, pool_features=64)
        self.Mixed_5d = lib.InceptionA(288, pool_features=64)
        self.Mixed_6a = lib.InceptionB(288)
        # 17x17 blocks (TF: mixed_4 .. mixed_7); sFID reads mixed_6 = Mixed_6d
        self.Mixed_6b = lib.InceptionC(768, channels_7x7=128)
        self.Mixed_6c = lib.InceptionC(768, channels_7x7=160)
        self.Mixed_6d = lib.InceptionC(768, channels_7x7=160)
        self.Mixed_6e = lib.InceptionC(768, channels_7x7=192)
        # reduction to 8x8 (mixed_8) and the two 8x8 blocks (mixed_9, mixed_10)
        self.Mixed_7a = lib.InceptionD(768)
        self.Mixed_7b = lib.InceptionE_1(1280)
        self.Mixed_7c = lib.InceptionE_2(2048)
        self.fc = nn.Linear(POOL_DIM, NUM_LOGITS)
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Inception expects images [B, 3, H, W] in [0, 255], got {tuple(images.shape)}")
        x = self._resize(images.float(), size=(INPUT_SIZE, INPUT_SIZE), align_corners=False)
        x = (x - 128.0) / 128.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(self.MaxPool_1(x)))
        x = self.MaxPool_2(x)
        x = self.Mixed_6a(self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x))))
        x = self.Mixed_6c(self.Mixed_6b(x))
        # mixed_6/conv: the 1x1 branch of Mixed_6d, recomputed here (a 1x1 conv) since the block concatenates it
        spatial = self.Mixed_6d.branch1x1(x)[:, :SPATIAL_CHANNELS]
        x = self.Mixed_6e(self.Mixed_6d(x))
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        pool = x.mean(dim=(2, 3))
        return {
            "pool": pool,
            "spatial": spatial.permute(0, 2, 3, 1).reshape(len(x), -1),  # TF's NHWC flattening
            "logits": pool @ self.fc.weight.T,  # ADM: softmax of the matmul, no bias
        }


def resolve_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The weights file: ``path``, else ``$ANYORDER_INCEPTION_WEIGHTS``; a clear error when absent."""
    source = "--inception-weights"
    if path is None:
        path = os.environ.get(INCEPTION_WEIGHTS_ENV) or None
        source = f"${INCEPTION_WEIGHTS_ENV}"
    how = (f"download {INCEPTION_WEIGHTS_FILE} (TensorFlow's 2015-12-05 Inception graph used by the ADM evaluator, "
           f"converted by torch-fidelity) from {INCEPTION_WEIGHTS_URL} and pass --inception-weights PATH or set "
           f"{INCEPTION_WEIGHTS_ENV}=PATH; nothing is downloaded at run time")
    if path is None:
        raise FileNotFoundError(f"no Inception weights given: {how}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"Inception weights file not found: {p} (from {source}): {how}")
    return p


def load_inception(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> InceptionV3:
    """:class:`InceptionV3` with torch-fidelity's weight file loaded strictly (``weights_only=True``).

    The published file has no ``num_batches_tracked`` buffers (they are unused in eval mode); any other
    missing, unexpected or mis-shaped key is an error naming the file.
    """
    p = resolve_inception_weights(path)
    state = load_state_dict(p, map_location="cpu")
    model = InceptionV3()
    expected = model.state_dict()
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value.clone()
    check_state_dict(expected, state, f"Inception weights {p}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
