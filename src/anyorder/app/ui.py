"""The Gradio page of ``anyorder app``: sample and watch the order, inpaint and outpaint.

:func:`build_app` makes the :class:`gradio.Blocks`; :func:`launch` serves it. Every model call runs through
one queue slot (``concurrency_id="decode"``, limit 1), so users are served one after another and each sees only
their own results (outputs go to the session that asked; the last generated images live in per-session state).

The sampling controls are made from the served families' sampling policies (:func:`setting_names`: every
field of every policy, once, with its help text and range); a control shows only for models whose policy has
that field. API names (for ``gradio_client``): ``/generate`` (model, class, images, *settings, seed, delay),
``/inpaint`` (model, editor, class, *settings, seed, delay), ``/outpaint`` (model, editor, side, amount,
class, *settings, seed, delay), ``/upload``, ``/to_editor``, ``/select_model``; ``*settings`` in the order of
:func:`setting_names`.
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
    AppModel,
    Update,
    class_choices,
    edit_note,
    generate_updates,
    inpaint_updates,
    load_upload,
    outpaint_updates,
    warm_up,
)
from anyorder.editing import SIDES
from anyorder.models import SettingInfo

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


def setting_infos(models: list[AppModel]) -> list[SettingInfo]:
    """Every sampling field of the served models' policies, once, in the order the policies declare them."""
    out: dict[str, SettingInfo] = {}
    for m in models:
        for info in m.spec.policy_class.settings():
            out.setdefault(info.name, info)
    return list(out.values())


def setting_names(models: list[AppModel]) -> list[str]:
    """The names of the sampling controls, in the order the HTTP API takes them."""
    return [info.name for info in setting_infos(models)]


def _bound(value: float | str | None, entry: AppModel) -> float | None:
    """A UI bound: a number, or the name of a model attribute (``codebook_size``, ``seq_len``)."""
    return getattr(entry.model, value) if isinstance(value, str) else value


def control_value(info: SettingInfo, entry: AppModel) -> Any:
    """The value a control shows for ``entry``: its recorded setting, or the field's default where its family
    has no such field (the control is then hidden and its value unused); ``steps`` 0 shows as the token
    count."""
    value = entry.defaults().get(info.name, info.default)
    if info.name == "steps" and not value:
        return entry.model.seq_len
    return value


def _control(info: SettingInfo, entry: AppModel) -> gr.components.Component:
    """The widget of one policy field, set for ``entry`` (hidden when its family has no such field)."""
    visible = info.name in entry.spec.policy_class.field_names()
    label = info.name.replace("_", " ")
    if info.type is bool:
        return gr.Checkbox(bool(control_value(info, entry)), label=label, info=info.help, visible=visible)
    if info.choices:
        return gr.Dropdown(list(info.choices), value=control_value(info, entry), label=label, info=info.help,
                           visible=visible)
    low, high = _bound(info.low, entry), _bound(info.high, entry)
    if high is None:
        return gr.Number(control_value(info, entry), label=label, info=info.help, visible=visible,
                         precision=0 if info.type is int else None, minimum=low)
    return gr.Slider(low if low is not None else 0, high, value=control_value(info, entry), step=info.step, label=label,
                     info=info.help, visible=visible)


def _control_update(info: SettingInfo, entry: AppModel) -> dict:
    visible = info.name in entry.spec.policy_class.field_names()
    high = _bound(info.high, entry)
    extra = {"maximum": high} if high is not None and not info.choices else {}
    return gr.update(value=control_value(info, entry), visible=visible, **extra)


def _updates_for(entry: AppModel, infos: list[SettingInfo]) -> tuple:
    """Component updates when ``entry`` is picked: classes, the sampling controls, and whether editing is on
    offer."""
    editable = entry.spec.can("known_tokens")
    h, w = entry.model.grid
    return (
        gr.update(choices=class_choices(entry), value=_default_class(entry)),
        *(_control_update(info, entry) for info in infos),
        gr.update(value=_model_note(entry)),
        gr.update(visible=not editable, value=f"⚠️ {edit_note(entry.family)}"),
        gr.update(interactive=editable),
        gr.update(interactive=editable),
        gr.update(maximum=max(h, w), value=_amount(entry)),
    )


def _default_class(entry: AppModel) -> int:
    return 207 if entry.model.num_classes == 1000 else 0  # golden retriever, as in the papers' figures


def _model_note(entry: AppModel) -> str:
    what = ("sampling, inpainting and outpainting" if entry.spec.can("known_tokens")
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
    infos = setting_infos(models)
    n_set = len(infos)
    editable0 = first.spec.can("known_tokens")

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

    def split(rest: tuple) -> tuple[dict[str, Any], int | None, float]:
        """The sampling controls' values by field name, the seed and the per-step delay (seconds)."""
        values = dict(zip((i.name for i in infos), rest[:n_set]))
        seed, delay_ms = rest[n_set:]
        return values, None if seed is None else int(seed), float(delay_ms or 0) / 1000.0

    def on_generate(name, cls, n, *rest):
        entry = entry_of(name)
        values, seed, delay = split(rest)
        yield from _stream(generate_updates(entry, cls, int(n), seed=seed, delay=delay, **values), True)

    def _editor_parts(editor: Any) -> tuple[Image.Image | None, list[Any]]:
        if editor is None:
            return None, []
        if isinstance(editor, Image.Image):
            return editor, []
        return editor.get("background"), editor.get("layers") or []

    def on_inpaint(name, editor, cls, *rest):
        entry = entry_of(name)
        bg, layers = _editor_parts(editor)
        values, seed, delay = split(rest)
        yield from _stream(inpaint_updates(entry, bg, layers, cls, seed=seed, delay=delay, **values), False)

    def on_outpaint(name, editor, side, amount, cls, *rest):
        entry = entry_of(name)
        bg, _ = _editor_parts(editor)
        values, seed, delay = split(rest)
        yield from _stream(outpaint_updates(entry, bg, side, int(amount), cls, seed=seed, delay=delay, **values),
                           False)

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
                controls = [_control(info, first) for info in infos]
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
                rar_note = gr.Markdown(f"⚠️ {edit_note(first.family)}", visible=not editable0)
                upload = gr.File(label="upload an image (any size: it is fitted to the model)", type="filepath",
                                 elem_id="upload")
                editor = gr.ImageEditor(label="brush over the part to regenerate", type="pil", format="png",
                                        sources=("upload", "clipboard"), layers=False, transforms=(),
                                        brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed", default_size=12),
                                        elem_id="editor")
                edit_msg = gr.Markdown(elem_id="edit-note")
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

        picked = [cls, *controls, model_note, rar_note, inpaint_btn, outpaint_btn,
                  amount]
        model.change(lambda name: _updates_for(entry_of(name), infos), model, picked, api_name="select_model")
        sampling = [*controls, seed, delay]
        decode_slot = {"concurrency_limit": 1, "concurrency_id": "decode"}
        gen_btn.click(on_generate, [model, cls, n_images, *sampling], [gen_image, gen_order, gen_status, last],
                      api_name="generate", **decode_slot)
        inpaint_btn.click(on_inpaint, [model, editor, cls, *sampling], [result, order, edit_status],
                          api_name="inpaint", **decode_slot)
        outpaint_btn.click(on_outpaint, [model, editor, side, amount, cls, *sampling], [result, order, edit_status],
                           api_name="outpaint", **decode_slot)
        upload.upload(on_upload, [model, upload], [editor, edit_msg], api_name="upload")
        to_editor.click(on_to_editor, [model, last, pick], [editor, edit_msg, tabs], api_name="to_editor")
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
