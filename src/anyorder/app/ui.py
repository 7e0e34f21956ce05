"""The Gradio page of ``anyorder app``: sample and watch the order, inpaint and outpaint (RandAR).

:func:`build_app` makes the :class:`gradio.Blocks`; :func:`launch` serves it. Every model call runs through
one queue slot (``concurrency_id="decode"``, limit 1), so users are served one after another and each sees only
their own results (outputs go to the session that asked; the last generated images live in per-session state).
API names (for ``gradio_client``): ``/generate``, ``/inpaint``, ``/outpaint``, ``/upload``, ``/to_editor``,
``/select_model``.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import os
import shutil
import signal
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from anyorder.app import render
from anyorder.app.core import (
    RAR_NOTE,
    AppModel,
    Update,
    class_choices,
    generate_updates,
    inpaint_updates,
    load_upload,
    outpaint_updates,
    warm_up,
)
from anyorder.editing import SIDES

__all__ = ["build_app", "launch"]

INTRO = """# anyorder: any-order image generation
Pick a class and **Generate**: the image is drawn step by step in the order the model generates its tokens
(grey = not generated yet); the map beside it shows *when* each token was placed (dark blue = first step,
yellow = last, light grey = kept as given). RAR generates in raster order, one token per step; RandAR in a
random order, several tokens per step when **steps** is below the token count. With a RandAR model,
**Inpaint / outpaint** regenerates the tokens you brush over, or extends the image on one side."""

CSS = """
#result img, #order img, #gen-result img, #gen-order img { image-rendering: pixelated; }
"""


def _theme() -> gr.themes.Base:
    # local fonts only: the page must not fetch anything from outside the server
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def _settings(entry: AppModel) -> dict[str, Any]:
    d = entry.defaults()
    return {"guidance_scale": d.get("guidance_scale", 1.0), "temperature": d.get("temperature", 1.0),
            "top_k": d.get("top_k", 0), "top_p": d.get("top_p", 1.0), "steps": d.get("steps", 0) or entry.model.seq_len}


def _updates_for(entry: AppModel) -> tuple:
    """Component updates when ``entry`` is picked: classes, sliders, and whether editing is on offer."""
    s = _settings(entry)
    T = entry.model.seq_len
    editable = entry.family == "randar"
    h, w = entry.model.grid
    return (
        gr.update(choices=class_choices(entry), value=_default_class(entry)),
        gr.update(value=s["guidance_scale"]),
        gr.update(value=s["temperature"]),
        gr.update(value=s["top_k"], maximum=entry.model.codebook_size),
        gr.update(value=s["top_p"]),
        gr.update(value=min(s["steps"], T), maximum=T, visible=editable,
                  info=f"{T} = one token per step"),
        gr.update(value=_model_note(entry)),
        gr.update(visible=not editable, value=f"⚠️ {RAR_NOTE}"),
        gr.update(interactive=editable),
        gr.update(interactive=editable),
        gr.update(maximum=max(h, w), value=_amount(entry)),
    )


def _default_class(entry: AppModel) -> int:
    return 207 if entry.model.num_classes == 1000 else 0  # golden retriever, as in the papers' figures


def _model_note(entry: AppModel) -> str:
    what = ("sampling, inpainting and outpainting" if entry.family == "randar"
            else "sampling only (its scan order is fixed: no editing)")
    return f"**{entry.label}**: {what}"


def _amount(entry: AppModel) -> int:
    return max(1, entry.model.grid[1] // 2)


_TEMP_DIRS: set[Path] = set()  # frame folders to remove when the process ends
_SIGNALS_HOOKED: set[int] = set()


def _remove_temp_dirs() -> None:
    for d in list(_TEMP_DIRS):
        shutil.rmtree(d, ignore_errors=True)
        _TEMP_DIRS.discard(d)


def _on_signal(signum: int, frame: Any, previous: Any) -> None:
    """Remove the frame folders, then do what ``previous`` (the handler this one replaced) would have done."""
    if previous == signal.SIG_IGN:
        return  # the signal was ignored: the process goes on, and so do its files
    _remove_temp_dirs()
    if callable(previous):
        previous(signum, frame)  # e.g. Python's SIGINT handler: KeyboardInterrupt
        return
    signal.signal(signum, signal.SIG_DFL)  # the default action (SIGTERM: end the process), as if never caught
    os.kill(os.getpid(), signum)


def _remove_at_exit(path: Path) -> None:
    """Remove ``path`` at exit and on SIGTERM / SIGINT (atexit alone misses a process ended by a signal).
    Handlers can only be set from the main thread; elsewhere atexit is all there is."""
    _TEMP_DIRS.add(path)
    atexit.register(shutil.rmtree, path, True)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        if sig not in _SIGNALS_HOOKED:
            previous = signal.getsignal(sig)
            signal.signal(sig, lambda signum, frame, previous=previous: _on_signal(signum, frame, previous))
            _SIGNALS_HOOKED.add(sig)


class _ImageFiles:
    """PNG files for the images the app returns, one per content, written atomically and never rewritten.

    Gradio saves a returned PIL image by rewriting a file named after its content, so two identical images
    in a row (or two users' identical first frames) could let a browser read a half-written file. A file path
    is copied into Gradio's cache under a temporary name and renamed instead. The newest ``keep`` files are
    kept (the directory is removed at exit, and on SIGTERM / SIGINT)."""

    def __init__(self, keep: int = 4096) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="anyorder-app-"))
        self.keep, self.paths, self.lock = keep, deque(), threading.Lock()
        _remove_at_exit(self.dir)

    def __call__(self, image: Image.Image) -> str:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        data = buf.getvalue()
        path = self.dir / f"{hashlib.sha256(data).hexdigest()[:40]}.png"
        with self.lock:
            if not path.exists():
                self.dir.mkdir(parents=True, exist_ok=True)  # removed by a SIGINT the process survived
                fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".part")
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
                self.paths.append(path)
                while len(self.paths) > self.keep:
                    self.paths.popleft().unlink(missing_ok=True)
        return str(path)


def _error(e: Exception) -> gr.Error:
    return gr.Error(str(e), print_exception=False)


def build_app(models: list[AppModel], notes: list[str] | None = None) -> gr.Blocks:
    """The page for ``models`` (the first is selected); ``notes`` are shown under the title."""
    if not models:
        raise ValueError("no models to serve")
    by_name = {m.name: m for m in models}
    if len(by_name) != len(models):
        raise ValueError(f"model names must be unique, got {[m.name for m in models]}")
    first = models[0]
    files = _ImageFiles()
    s0 = _settings(first)
    T0, editable0 = first.model.seq_len, first.family == "randar"

    def entry_of(name: str) -> AppModel:
        if name not in by_name:
            raise gr.Error(f"unknown model {name!r}; this app serves {sorted(by_name)}")
        return by_name[name]

    def _stream(updates: Iterator[Update], state_out: bool) -> Iterator[tuple]:
        try:
            for u in updates:
                image, order = files(u.image), files(u.order)
                if state_out:
                    yield image, order, u.status, (u.pixels if u.final else gr.skip())
                else:
                    yield image, order, u.status
        except ValueError as e:
            raise _error(e) from e

    def on_generate(name, cls, n, guidance, temperature, top_k, top_p, steps, seed, delay_ms):
        entry = entry_of(name)
        yield from _stream(generate_updates(entry, cls, int(n), seed=None if seed is None else int(seed),
                                            delay=float(delay_ms or 0) / 1000.0, guidance_scale=guidance,
                                            temperature=temperature, top_k=top_k, top_p=top_p, steps=steps), True)

    def _editor_parts(editor: Any) -> tuple[Image.Image | None, list[Any]]:
        if editor is None:
            return None, []
        if isinstance(editor, Image.Image):
            return editor, []
        return editor.get("background"), editor.get("layers") or []

    def on_inpaint(name, editor, cls, guidance, temperature, top_k, top_p, steps, seed, delay_ms):
        entry = entry_of(name)
        bg, layers = _editor_parts(editor)
        yield from _stream(inpaint_updates(entry, bg, layers, cls, seed=None if seed is None else int(seed),
                                           delay=float(delay_ms or 0) / 1000.0, guidance_scale=guidance,
                                           temperature=temperature, top_k=top_k, top_p=top_p, steps=steps), False)

    def on_outpaint(name, editor, side, amount, cls, guidance, temperature, top_k, top_p, steps, seed, delay_ms):
        entry = entry_of(name)
        bg, _ = _editor_parts(editor)
        yield from _stream(outpaint_updates(entry, bg, side, int(amount), cls, seed=None if seed is None else int(seed),
                                            delay=float(delay_ms or 0) / 1000.0, guidance_scale=guidance,
                                            temperature=temperature, top_k=top_k, top_p=top_p, steps=steps), False)

    def on_upload(name, file):
        entry = entry_of(name)
        if file is None:
            return gr.skip(), ""
        path = file if isinstance(file, str) else getattr(file, "name", str(file))
        try:
            image, notes = load_upload(path, entry)
        except ValueError as e:
            raise _error(e) from e
        for n in notes:
            gr.Warning(n)
        msg = " ".join(notes) or f"Loaded a {entry.image_size}x{entry.image_size} image."
        path = files(image)
        return {"background": path, "layers": [], "composite": path}, msg + " Brush over what to regenerate."

    def on_to_editor(name, pixels, index):
        entry = entry_of(name)
        if pixels is None:
            raise gr.Error("generate some images first")
        i = int(index or 1) - 1
        if not 0 <= i < pixels.shape[0]:
            raise gr.Error(f"image # must be in 1..{pixels.shape[0]}, got {i + 1}")
        path = files(render.tile(pixels[i : i + 1], entry.scale))
        return ({"background": path, "layers": [], "composite": path},
                f"Image #{i + 1} is in the editor: brush over what to regenerate.", gr.update(selected="edit"))

    # delete_cache: Gradio's copies of the streamed frames older than an hour go, checked every half hour
    with gr.Blocks(title="anyorder", analytics_enabled=False, delete_cache=(1800, 3600)) as app:
        gr.Markdown(INTRO)
        for n in notes or []:
            gr.Markdown(n)
        with gr.Row():
            model = gr.Dropdown([(m.label, m.name) for m in models], value=first.name, label="model", scale=2)
            cls = gr.Dropdown(class_choices(first), value=_default_class(first), label="class", scale=2)
            n_images = gr.Slider(1, 16, value=8, step=1, label="images", scale=1)
            seed = gr.Number(0, label="seed", precision=0, scale=1)
        model_note = gr.Markdown(_model_note(first))
        with gr.Accordion("sampling settings", open=True):
            with gr.Row():
                guidance = gr.Slider(0.0, 10.0, value=s0["guidance_scale"], step=0.25, label="guidance scale",
                                     info="classifier-free guidance (1 = off)")
                temperature = gr.Slider(0.05, 2.0, value=s0["temperature"], step=0.05, label="temperature")
                top_k = gr.Slider(0, first.model.codebook_size, value=s0["top_k"], step=1, label="top-k",
                                  info="0 = off")
                top_p = gr.Slider(0.05, 1.0, value=s0["top_p"], step=0.05, label="top-p", info="1 = off")
                steps = gr.Slider(1, T0, value=min(s0["steps"], T0), step=1, label="steps (RandAR)", visible=editable0,
                                  info=f"{T0} = one token per step")
                delay = gr.Slider(0, 200, value=30, step=10, label="ms per shown step",
                                  info="0 = as fast as it decodes")
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate"):
                gen_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                with gr.Row():
                    gen_image = gr.Image(label="image (drawn in generation order)", type="pil", format="png",
                                         interactive=False, elem_id="gen-result")
                    gen_order = gr.Image(label="order: when each token was placed", type="pil", format="png",
                                         interactive=False, elem_id="gen-order")
                gen_status = gr.Markdown(elem_id="gen-status")
                with gr.Row():
                    pick = gr.Number(1, label="image # to edit", precision=0, minimum=1)
                    to_editor = gr.Button("Edit this image →", elem_id="to-editor-btn")
            with gr.Tab("Inpaint / outpaint", id="edit"):
                rar_note = gr.Markdown(f"⚠️ {RAR_NOTE}", visible=not editable0)
                upload = gr.File(label="upload an image (any size: it is fitted to the model)", type="filepath",
                                 elem_id="upload")
                editor = gr.ImageEditor(label="brush over the part to regenerate", type="pil", format="png",
                                        sources=("upload", "clipboard"), layers=False, transforms=(),
                                        brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed", default_size=12),
                                        elem_id="editor")
                edit_note = gr.Markdown(elem_id="edit-note")
                with gr.Row():
                    inpaint_btn = gr.Button("Inpaint (regenerate the brushed tokens)", variant="primary",
                                            elem_id="inpaint-btn", interactive=editable0)
                    side = gr.Radio(list(SIDES), value="right", label="outpaint side")
                    amount = gr.Slider(1, max(first.model.grid), value=_amount(first), step=1,
                                       label="outpaint by (tokens)")
                    outpaint_btn = gr.Button("Outpaint", elem_id="outpaint-btn", interactive=editable0)
                with gr.Row():
                    result = gr.Image(label="result", type="pil", format="png", interactive=False, elem_id="result")
                    order = gr.Image(label="order: when each token was placed", type="pil", format="png",
                                     interactive=False, elem_id="order")
                edit_status = gr.Markdown(elem_id="edit-status")
        last = gr.State(None)  # this session's last generated pixels [B, C, H, W]

        picked = [cls, guidance, temperature, top_k, top_p, steps, model_note, rar_note, inpaint_btn, outpaint_btn,
                  amount]
        model.change(lambda name: _updates_for(entry_of(name)), model, picked, api_name="select_model")
        sampling = [guidance, temperature, top_k, top_p, steps, seed, delay]
        decode_slot = {"concurrency_limit": 1, "concurrency_id": "decode"}
        gen_btn.click(on_generate, [model, cls, n_images, *sampling], [gen_image, gen_order, gen_status, last],
                      api_name="generate", **decode_slot)
        inpaint_btn.click(on_inpaint, [model, editor, cls, *sampling], [result, order, edit_status],
                          api_name="inpaint", **decode_slot)
        outpaint_btn.click(on_outpaint, [model, editor, side, amount, cls, *sampling], [result, order, edit_status],
                           api_name="outpaint", **decode_slot)
        upload.upload(on_upload, [model, upload], [editor, edit_note], api_name="upload")
        to_editor.click(on_to_editor, [model, last, pick], [editor, edit_note, tabs], api_name="to_editor")
    app.queue(default_concurrency_limit=1, max_size=64)
    app.anyorder_models = models  # for launch's warm-up
    return app


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, block: bool = True, quiet: bool = False):
    """Serve ``app`` on ``host:port`` (no share link, no analytics, no server-side rendering). The models are
    warmed up in the background (:func:`anyorder.app.core.warm_up`) once the server is up."""
    out = app.launch(server_name=host, server_port=port, share=False, quiet=quiet,
                      ssr_mode=False, show_error=True, theme=_theme(), css=CSS, footer_links=["api"],
                      max_file_size="20mb", prevent_thread_lock=True)
    models = getattr(app, "anyorder_models", [])
    threading.Thread(target=warm_up, args=(models,), name="anyorder-warm-up", daemon=True).start()
    if block:
        app.block_thread()
    return out
