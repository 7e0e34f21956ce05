"""What the web app does, without the web: models on offer, generation and editing as streams of pictures.

Each action is an iterator of :class:`Update` (image, order map, status text), one per decoding step, that
the Gradio layer (:mod:`anyorder.app.ui`) yields to the browser. Everything here can be driven from Python.

- :func:`generate_updates`: class-conditional sampling, drawn step by step in generation order.
- :func:`inpaint_updates`: regenerate the brushed tokens of an image (RandAR).
- :func:`outpaint_updates`: extend an image by some tokens on one side (RandAR).

Images enter as PIL images of any size (fitted to the model's image size, with a note) and leave as PIL
images upscaled by an integer ``scale`` (:func:`anyorder.app.render.tile`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from anyorder.app import render
from anyorder.app.stream import Frame, stream
from anyorder.data.classes import imagenet_classes
from anyorder.editing import SIDES, mask_from_image
from anyorder.io.images import PixelRangeError, to_8bit
from anyorder.io.seeds import check_seed
from anyorder.models import families_with, family_of, get_family
from anyorder.sampling import DecodeJob, edit_job, generation_job, model_sampling

__all__ = ["AppModel", "Update", "class_choices", "generate_updates", "inpaint_updates", "outpaint_updates",
           "load_upload", "classes_for", "sampling_settings", "edit_note", "warm_up"]

EVERY_CLASS = -1  # class picker: one image per class in turn


def edit_note(family: str) -> str:
    """Why a model of ``family`` offers sampling only (empty when it can edit)."""
    spec = get_family(family)
    if spec.can("known_tokens"):
        return ""
    can = ", ".join(get_family(f).display_name for f in families_with("known_tokens"))
    return (f"{spec.display_name} offers sampling only: it generates its tokens in one fixed scan order, so it "
            f"cannot condition on known tokens at arbitrary positions. Inpainting and outpainting need a model "
            f"that can ({can}).")


@dataclass
class AppModel:
    """A generator + its tokenizer, as the app serves them. ``class_names``: the names of its classes (a bundled
    dataset's; ImageNet's for 1000-class models; indices otherwise)."""

    name: str
    model: Any
    tokenizer: Any
    class_names: tuple[str, ...] = ()
    lock: threading.Lock = field(default_factory=threading.Lock)  # one decode at a time (shared KV cache)

    @property
    def family(self) -> str:
        return self.model.family

    @property
    def spec(self) -> Any:
        return family_of(self.model)

    @property
    def downsample(self) -> int:
        return int(self.tokenizer.downsample)

    @property
    def image_size(self) -> int:
        """Pixels per side of a generated image (the model's grid times the tokenizer's downsampling)."""
        return int(self.model.grid[0]) * self.downsample

    @property
    def scale(self) -> int:
        return render.display_scale(self.image_size)

    @property
    def label(self) -> str:
        h, w = self.model.grid
        return f"{self.name} ({self.spec.display_name}, {h}x{w} tokens)"

    def defaults(self) -> dict[str, Any]:
        """The sampling settings the model was made with (its run's record or its preset's), as a dict."""
        return model_sampling(self.model).to_dict()


@dataclass
class Update:
    """What the browser shows after a step: the image(s), the order map, a status line."""

    image: Image.Image
    order: Image.Image
    status: str
    final: bool = False
    codes: Tensor | None = None  # the finished codes [B, h, w] (on the final update)
    pixels: Tensor | None = None  # the finished pixels [B, C, H, W] at native size (on the final update)


def class_choices(entry: AppModel, every: bool = True) -> list[tuple[str, int]]:
    """(label, value) pairs for the class picker: ImageNet names for 1000-class models, the model's class names
    (the demo's digits), indices otherwise; then "unconditional" (the null class) and, with ``every``, one
    image per class."""
    n = entry.model.num_classes
    names = imagenet_classes() if n == 1000 else []
    if names:
        out = [(f"{i}: {names[i]}", i) for i in range(n)]
    elif len(entry.class_names) == n:
        out = [(name, i) for i, name in enumerate(entry.class_names)]
    else:
        out = [(f"class {i}", i) for i in range(n)]
    out.append(("unconditional (null class)", entry.model.null_class))
    if every:
        out.insert(0, ("every class in turn", EVERY_CLASS))
    return out


def classes_for(entry: AppModel, cls: int, n: int) -> list[int]:
    """``n`` class ids for one picker value (:data:`EVERY_CLASS`: 0, 1, 2, ... in turn)."""
    cls = int(cls)
    if cls == EVERY_CLASS:
        return [i % entry.model.num_classes for i in range(n)]
    if not 0 <= cls <= entry.model.null_class:
        raise ValueError(f"class {cls} out of range: {entry.name} has {entry.model.num_classes} classes "
                         f"(0..{entry.model.num_classes - 1}; {entry.model.null_class} = unconditional)")
    return [cls] * n


def sampling_settings(entry: AppModel, **ui: Any) -> dict[str, Any]:
    """The model's recorded sampling settings overridden by the UI's (``None`` = keep), for the fields of the
    model's policy only (a widget of another family's field is ignored). A parallel family's ``steps`` slider
    at the token count (or 0) means one token per step."""
    out = entry.defaults()
    for info in entry.spec.policy_class.settings():
        value = ui.get(info.name)
        if value is not None:
            out[info.name] = info.type(value)
    if "steps" in out and (out["steps"] <= 0 or out["steps"] >= entry.model.seq_len):
        out["steps"] = 0  # one token per step
    return out


def _status(job: DecodeJob, frame: Frame, t0: float, what: str) -> str:
    gen_total = frame.total - job.known
    gen_done = frame.done - job.known
    step = int(frame.step.max()) if frame.done > job.known else 0
    secs = time.perf_counter() - t0
    if frame.final:
        return f"done: {what}, {gen_total} tokens in {frame.steps} steps, {secs:.2f} s"
    return f"{what}: step {step}/{frame.steps}, {gen_done}/{gen_total} tokens, {secs:.2f} s"


def _run(entry: AppModel, job: DecodeJob, what: str, base: Tensor | None, notes: list[str],
         delay: float = 0.0) -> Iterator[Update]:
    """Stream ``job``; one :class:`Update` per frame (the final one carries codes and pixels).

    ``delay`` seconds between shown steps replays the decode at a watchable pace (the decode itself runs at
    full speed in its thread); without it, steps that pile up while a picture is drawn are skipped."""
    t0 = time.perf_counter()
    note = "".join(f"\n\n{n}" for n in notes)
    last = 0.0
    for frame in stream(job, entry.lock, coalesce=delay <= 0):
        if delay > 0 and not frame.final:
            time.sleep(max(0.0, last + delay - time.perf_counter()))
            last = time.perf_counter()
        px = render.frame_pixels(entry.tokenizer, frame, base)
        order = render.order_map(frame, entry.downsample)
        update = Update(render.tile(px, entry.scale), render.tile(order, entry.scale),
                        _status(job, frame, t0, what) + note, frame.final)
        if frame.final:
            update.codes, update.pixels = frame.codes, px
        yield update


def _app_seed(seed: Any) -> int | None:
    """The seed box's value, range-checked (:func:`anyorder.io.seeds.check_seed`); a number box may send a
    float, which must be a whole number."""
    if seed is None:
        return None
    if isinstance(seed, float):
        if not seed.is_integer():
            raise ValueError(f"seed must be a whole number, got {seed}")
        seed = int(seed)
    return check_seed(seed, "seed")


def generate_updates(entry: AppModel, cls: int, n: int = 8, seed: int | None = 0, delay: float = 0.0,
                     **ui: Any) -> Iterator[Update]:
    """Sample ``n`` images of class ``cls`` (or every class in turn), streamed step by step."""
    if not 1 <= int(n) <= 64:
        raise ValueError(f"number of images must be in 1..64, got {n}")
    classes = classes_for(entry, cls, int(n))
    job = generation_job(entry.model, classes, sampling_settings(entry, **ui), seed=_app_seed(seed))
    how = f" in {job.policy.order} orders" if entry.spec.can("parallel") else " in its scan order"
    what = f"{n} image{'s' if n != 1 else ''}{how}"
    yield from _run(entry, job, what, None, [], delay)


def warm_up(models: list[AppModel]) -> None:
    """One tiny generation per model (first calls of torch kernels, the colour map): the first user's first
    partial image then comes as quickly as the later ones."""
    for entry in models:
        for _ in generate_updates(entry, 0, 1, seed=0):
            pass


# ---- images and masks from the browser --------------------------------------------------------------------
def load_upload(path: str, entry: AppModel) -> tuple[Image.Image, list[str]]:
    """An uploaded file as the model's ``S x S`` image (the display copy, upscaled) and notes. A file that is
    not an image is a :class:`ValueError` naming it."""
    try:
        with Image.open(path) as img:
            img.load()
            image = to_8bit(img, Path(path).name).convert("RGB")  # 16-bit / float: scaled, not clipped
    except PixelRangeError:
        raise  # names the file and its pixel range
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{Path(path).name} is not an image that can be read ({type(e).__name__}): "
                         "upload a PNG, JPEG, WebP or similar picture") from e
    pixels, notes = _fit_image(image, entry)
    return render.tile(pixels, entry.scale), notes


def _fit_image(image: Image.Image, entry: AppModel) -> tuple[Tensor, list[str]]:
    S = entry.image_size
    fitted, resized = render.fit_square(image, S)
    notes = [f"Note: the {image.size[0]}x{image.size[1]} image was centre-cropped and resized to {S}x{S}, "
             f"the model's image size."] if resized else []
    return render.pil_to_pixels(fitted, entry.tokenizer.in_channels), notes


def _fit_mask(mask: np.ndarray, S: int) -> np.ndarray:
    """A boolean pixel mask on the editor's canvas -> ``S x S`` bool, cropped and scaled as the image is
    (:func:`anyorder.app.render.fit_square`); a pixel of the result is masked if any pixel it covers is."""
    fitted, _ = render.fit_square(Image.fromarray(mask.astype(np.uint8) * 255), S, resample=Image.Resampling.BOX)
    return np.asarray(fitted) > 0


def _brushed(layers: list[Any] | None, size: tuple[int, int]) -> np.ndarray | None:
    """Union of the editor layers' painted pixels (alpha > 0; any non-zero channel without alpha), ``[H, W]``
    bool on the background's canvas (``size`` = its W, H; a layer of another size is scaled to it), or
    ``None`` when nothing was painted on any layer."""
    out = None
    for layer in layers or []:
        if layer is None:
            continue
        img = layer if isinstance(layer, Image.Image) else Image.fromarray(np.asarray(layer).astype(np.uint8))
        arr = np.asarray(img)
        painted = arr[..., 3] > 0 if img.mode == "RGBA" else (arr.reshape(arr.shape[0], arr.shape[1], -1) > 0).any(-1)
        if img.size != size:
            painted = np.asarray(Image.fromarray(painted).resize(size, Image.Resampling.NEAREST))
        out = painted if out is None else out | painted
    return out


def _encode(entry: AppModel, pixels: Tensor) -> Tensor:
    dev = next(entry.tokenizer.parameters()).device
    with torch.no_grad():
        codes = entry.tokenizer.encode(pixels.to(dev))
    if tuple(codes.shape[1:]) != tuple(entry.model.grid):
        raise ValueError(f"the tokenizer gives a {tuple(codes.shape[1:])} grid, the model expects {entry.model.grid}")
    return codes.to(entry.model.device)


def _edit_settings(entry: AppModel, ui: dict[str, Any]) -> dict[str, Any]:
    if not entry.spec.can("known_tokens"):
        raise ValueError(edit_note(entry.family))
    return sampling_settings(entry, **ui)


def inpaint_updates(entry: AppModel, background: Image.Image | None, layers: list[Any] | None, cls: int,
                    seed: int | None = 0, delay: float = 0.0, **ui: Any) -> Iterator[Update]:
    """Regenerate the tokens under the brushed pixels of ``background`` (the editor's layers), streamed.

    The pixel mask is snapped to tokens (a token is regenerated if any of its pixels is brushed); pixels of
    the other tokens come back exactly as given. An empty mask returns the input; a full mask is plain
    sampling (:func:`anyorder.editing.inpaint` with every token unknown is :func:`anyorder.sampling.generate`).
    """
    settings = _edit_settings(entry, ui)
    if background is None:
        raise ValueError("no image to inpaint: upload one or send a generated image to the editor first")
    pixels, notes = _fit_image(background, entry)
    S = entry.image_size
    brushed = _brushed(layers, background.size)
    pix_mask = np.zeros((S, S), bool) if brushed is None else _fit_mask(brushed, S)
    token_mask = mask_from_image(torch.from_numpy(pix_mask), S, entry.model.grid, rule="any")
    codes = _encode(entry, pixels)
    h, w = entry.model.grid
    m = int(token_mask.sum())
    cls = classes_for(entry, cls, 1)[0] if int(cls) != EVERY_CLASS else entry.model.null_class
    if m == 0:
        frame = Frame(codes.cpu(), torch.ones(1, h, w, dtype=torch.bool), torch.zeros(1, h, w, dtype=torch.long),
                      h * w, h * w, 0, final=True)
        px = render.frame_pixels(entry.tokenizer, frame, pixels)
        yield Update(render.tile(px, entry.scale), render.tile(render.order_map(frame, entry.downsample),
                     entry.scale), "\n\n".join(["The mask is empty: nothing to regenerate, here is the input. "
                                                "Brush over the part of the image to regenerate."] + notes),
                     True, codes.cpu(), px)
        return
    if m == h * w:
        notes.append("The mask covers the whole image: this is plain class-conditional sampling.")
    job = edit_job(entry.model, codes, token_mask.to(codes.device), [cls], settings,
                   seed=_app_seed(seed))
    yield from _run(entry, job, f"inpainting {m} of {h * w} tokens", pixels, notes, delay)


def outpaint_updates(entry: AppModel, background: Image.Image | None, side: str, amount: int, cls: int,
                     seed: int | None = 0, delay: float = 0.0, **ui: Any) -> Iterator[Update]:
    """Extend ``background`` by ``amount`` tokens on ``side``, streamed: on a canvas larger than the trained grid
    where the family has positions beyond it (RandAR: RoPE extrapolated, as :func:`anyorder.editing.outpaint`
    with ``rope="extrapolate"``), otherwise inside the trained grid — the image shifted by ``amount`` tokens away
    from ``side`` (the far ``amount`` tokens leave the picture) and the strip on ``side`` generated."""
    settings = _edit_settings(entry, ui)
    if background is None:
        raise ValueError("no image to outpaint: upload one or send a generated image to the editor first")
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    h, w = entry.model.grid
    amount = int(amount)
    larger = entry.spec.can("canvas")
    most = max(h, w) if larger else (w if side in ("left", "right") else h) - 1
    if not 1 <= amount <= most:
        raise ValueError(f"outpaint by 1..{most} tokens, got {amount}")
    pixels, notes = _fit_image(background, entry)
    codes = _encode(entry, pixels)[0]
    pad = {"left": (0, 0, amount, 0), "right": (0, 0, 0, amount), "top": (amount, 0, 0, 0),
           "bottom": (0, amount, 0, 0)}[side]  # top, bottom, left, right
    H, W = h + pad[0] + pad[1], w + pad[2] + pad[3]
    canvas = torch.zeros(1, H, W, dtype=torch.long, device=codes.device)
    canvas[0, pad[0] : pad[0] + h, pad[2] : pad[2] + w] = codes
    unknown = torch.ones(H, W, dtype=torch.bool)
    unknown[pad[0] : pad[0] + h, pad[2] : pad[2] + w] = False
    ds = entry.downsample
    base = torch.zeros(1, pixels.shape[1], H * ds, W * ds)
    base[..., pad[0] * ds : (pad[0] + h) * ds, pad[2] * ds : (pad[2] + w) * ds] = pixels
    if not larger:  # inside the trained grid: keep the h x w window on `side`'s side of the larger canvas
        top = 0 if side != "bottom" else amount
        left = 0 if side != "right" else amount
        canvas, unknown = canvas[:, top : top + h, left : left + w], unknown[top : top + h, left : left + w]
        base = base[..., top * ds : (top + h) * ds, left * ds : (left + w) * ds]
        H, W = h, w
        notes.append(f"{entry.spec.display_name} has no positions beyond its {h}x{w} grid: the image moved "
                     f"{amount} token{'s' if amount > 1 else ''} away from the {side} and the strip generated.")
    cls = classes_for(entry, cls, 1)[0] if int(cls) != EVERY_CLASS else entry.model.null_class
    job = edit_job(entry.model, canvas, unknown.to(canvas.device), [cls], settings,
                   seed=_app_seed(seed))
    yield from _run(entry, job, f"outpainting {amount} token{'s' if amount > 1 else ''} {side} ({H}x{W} canvas)",
                    base, notes, delay)
