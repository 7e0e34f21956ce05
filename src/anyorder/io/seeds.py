"""Seeds, range-checked where they enter (CLI, app, configs, API): ``0 <= seed < 2**32``.

torch's CPU generator (mt19937) keeps only the low 32 bits of a seed: ``manual_seed(2**32 + s)`` and
``manual_seed(2**63 + s)`` draw exactly what ``manual_seed(s)`` draws, and negative seeds are taken modulo
``2**64``. A seed outside ``[0, 2**32)`` would silently give the images of another seed, so it is refused
with a message naming where it came from. (The CUDA generator keeps 64 bits; one range for every device
keeps every accepted seed distinct wherever it runs.)
"""

from __future__ import annotations

import argparse
import numbers
from typing import Any

__all__ = ["SEED_LIMIT", "check_seed", "seed_arg"]

SEED_LIMIT = 2**32  # seeds are 0 .. SEED_LIMIT - 1


def check_seed(seed: Any, source: str = "seed") -> int:
    """``seed`` as an ``int`` if it is an integer in ``[0, 2**32)``; else :class:`ValueError` naming ``source``
    (an option, config key or argument, e.g. ``"--seed"`` or ``"train.seed"``) and the value."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"{source} must be an integer in 0..{SEED_LIMIT - 1}, got {seed!r}")
    if not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"{source} must be in 0..{SEED_LIMIT - 1} (2**32 - 1), got {int(seed)}: torch keeps only the "
                         f"low 32 bits of a seed, so it would draw the images of seed {int(seed) % SEED_LIMIT}")
    return int(seed)


def seed_arg(text: str) -> int:
    """An argparse ``type=`` for ``--seed``: the integer, range-checked by :func:`check_seed`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: not an integer") from None
    try:
        return check_seed(value, "the seed")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
