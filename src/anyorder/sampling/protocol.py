"""Evaluation protocols as the sampling layer applies them: which one, the labels, the dtype path.

A protocol (:class:`~anyorder.models.spec.EvalProtocol`, one per family in its spec, plus
``"anyorder"``: ours before issue 21) says how a paper made its FID samples: the label layout, the
dtype path, the uint8 conversion and whether TF32 was allowed. ``anyorder sample --npz`` uses the
model family's protocol unless ``--protocol`` names another; the sample file's JSON records it, and
``anyorder eval`` copies it into the metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from anyorder.models.registry import FAMILIES, family_of
from anyorder.models.spec import DEFAULT_PROTOCOL, DTYPE_PATHS, LABEL_LAYOUTS, EvalProtocol
from anyorder.nn.device import tf32_mode

__all__ = ["protocols", "get_protocol", "model_protocol", "protocol_labels", "balanced_labels",
           "sorted_labels", "random_labels", "labels_seed", "with_dtype", "prepare_model", "precision"]


def protocols() -> dict[str, EvalProtocol]:
    """Every protocol by name: the registered families' and ``"anyorder"``."""
    out = {DEFAULT_PROTOCOL.name: DEFAULT_PROTOCOL}
    for spec in FAMILIES.values():
        if spec.protocol is not None:
            out[spec.protocol.name] = spec.protocol
    return out


def get_protocol(name: str) -> EvalProtocol:
    known = protocols()
    if name not in known:
        raise ValueError(f"unknown evaluation protocol {name!r}; known: {', '.join(sorted(known))}")
    return known[name]


def model_protocol(model: Any, name: str | None = None) -> EvalProtocol:
    """Protocol ``name``, or (None) the model family's own (``"anyorder"`` for a family without
    one)."""
    if name is not None:
        return get_protocol(name)
    return family_of(model).protocol or DEFAULT_PROTOCOL


def with_dtype(protocol: EvalProtocol, dtype: str | None) -> EvalProtocol:
    """``protocol`` with another dtype path (an explicit ``--dtype``); the change is in its name
    (``"randar+fp32"``), so a file made so never passes for the official path."""
    if dtype is None or dtype == protocol.dtype:
        return protocol
    if dtype not in DTYPE_PATHS:
        raise ValueError(f"--dtype must be one of {sorted(DTYPE_PATHS)}, got {dtype!r}")
    return dataclasses.replace(protocol, name=f"{protocol.name}+{dtype}", dtype=dtype)


def _checked(num_samples: int, classes: Sequence[int]) -> list[int]:
    if num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {num_samples}")
    classes = [int(c) for c in classes]
    if not classes:
        raise ValueError("no classes to sample")
    return classes


def balanced_labels(num_samples: int, classes: Sequence[int]) -> Tensor:
    """``num_samples`` labels (int64) spread evenly over ``classes``: ``classes[i % C]`` for sample
    ``i``.

    Every class gets ``N // C`` samples and the first ``N % C`` classes one more (50,000 over 1,000
    classes: 50 each, RAR's ``list(range(1000)) * 50``). Interleaving mixes classes within each
    batch.
    """
    classes = _checked(num_samples, classes)
    rounds = -(-num_samples // len(classes))
    return torch.tensor(classes, dtype=torch.int64).repeat(rounds)[:num_samples]


def sorted_labels(num_samples: int, classes: Sequence[int]) -> Tensor:
    """The class-balanced counts (``N // C`` each, the first ``N % C`` classes one more) in class
    order: LPD's ``np.arange(C).repeat(N // C)`` when ``C`` divides ``N``."""
    classes = _checked(num_samples, classes)
    per, extra = divmod(num_samples, len(classes))
    counts = torch.tensor([per + (j < extra) for j in range(len(classes))])
    return torch.tensor(classes, dtype=torch.int64).repeat_interleave(counts)


def labels_seed(seed: int) -> int:
    """The 63-bit seed of a file's random labels (sha256 of the run seed; not any chunk's
    stream)."""
    digest = hashlib.sha256(f"anyorder.labels:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def random_labels(num_samples: int, classes: Sequence[int], seed: int) -> Tensor:
    """``num_samples`` classes drawn uniformly from ``classes`` (RandAR's ``torch.randint(0,
    num_classes, ...)`` per batch), all at once from :func:`labels_seed` on the CPU: the same for
    any batch size or process count."""
    classes = _checked(num_samples, classes)
    g = torch.Generator().manual_seed(labels_seed(seed))
    picks = torch.randint(0, len(classes), (num_samples,), generator=g)
    return torch.tensor(classes, dtype=torch.int64)[picks]


def protocol_labels(protocol: EvalProtocol, num_samples: int, classes: Sequence[int],
                    seed: int) -> Tensor:
    """The labels of ``num_samples`` samples over ``classes`` in the protocol's layout
    (:data:`LABEL_LAYOUTS`)."""
    if protocol.labels == "balanced":
        return balanced_labels(num_samples, classes)
    if protocol.labels == "sorted":
        return sorted_labels(num_samples, classes)
    if protocol.labels == "random":
        return random_labels(num_samples, classes, seed)
    raise ValueError(f"unknown label layout {protocol.labels!r}; known: {sorted(LABEL_LAYOUTS)}")


def prepare_model(model: Any, protocol: EvalProtocol) -> Any:
    """The model in the protocol's weights dtype: cast to bfloat16 for ``"bf16-weights"`` (its
    float32 buffers, RandAR's RoPE table, recomputed); a bfloat16 model under another dtype path is
    an error."""
    dtype = next(model.parameters()).dtype
    if protocol.dtype == "bf16-weights":
        if dtype != torch.bfloat16:
            model = model.to(torch.bfloat16)
            model.reset_buffers()
        return model
    if dtype != torch.float32:
        raise ValueError(f"protocol {protocol.name!r} samples with {protocol.dtype} but the model's "
                         f"weights are {dtype}: load it in float32")
    return model


@contextlib.contextmanager
def precision(protocol: EvalProtocol, device: torch.device) -> Iterator[None]:
    """Sampling and decoding under the protocol's compute settings: ``torch.autocast(bfloat16)`` for
    ``"bf16-autocast"``; on CUDA TF32 matrix products allowed or not as the protocol says (restored
    after)."""
    with tf32_mode(protocol.tf32, device):
        if protocol.dtype == "bf16-autocast":
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                yield
        else:
            yield
