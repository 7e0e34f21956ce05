"""Class ids from indices or names (ImageNet names for the released models)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names (index order), from ``resources/imagenet_classes.txt``."""
    f = resources.files("anyorder") / "resources" / "imagenet_classes.txt"
    if not f.is_file():
        return []
    return [line.strip() for line in f.read_text().splitlines() if line.strip()]


def class_index(spec: str | int, num_classes: int) -> int:
    """``"207"`` or ``"golden retriever"`` -> 207; errors name the bad value and the valid range."""
    s = str(spec).strip()
    if s.lstrip("-").isdigit():
        idx = int(s)
    else:
        names = imagenet_classes() if num_classes == 1000 else []
        key = s.lower().replace("_", " ")
        matches = [i for i, n in enumerate(names) if key in [a.strip().lower() for a in n.split(",")]]
        if not matches:
            matches = [i for i, n in enumerate(names) if key in n.lower()]
        if not matches:
            raise ValueError(f"unknown class name {s!r}" + ("" if names else
                             f" (names are available for ImageNet models only; use an index in 0..{num_classes - 1})"))
        idx = matches[0]
    if not 0 <= idx < num_classes:
        raise ValueError(f"class id {idx} out of range: this model has {num_classes} classes (0..{num_classes - 1})")
    return idx
