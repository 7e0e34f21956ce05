"""``anyorder app``: the web app, in Python, through its HTTP API (gradio_client) and in a real headless browser.

The app serves tiny random models saved in the demo-run layout (``ANYORDER_APP_RUNS=DIR`` serves the real demo
runs in ``DIR`` instead, e.g. to take the screenshot in ``docs/`` with ``ANYORDER_WRITE_DOCS=1``). Every image the
app returns is checked against the library: a streamed generation is ``anyorder.sampling.generate`` with the same
seed, a streamed edit is ``anyorder.editing.inpaint`` / ``outpaint``, and inpainting keeps the pixels of the
tokens it does not regenerate exactly as given.
"""

from __future__ import annotations

import importlib
import io
import os
import re
import shutil
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import in_ci
from PIL import Image

from anyorder import editing as E
from anyorder.app import core, demo_models, render
from anyorder.app.models import DEMO_FAMILIES
from anyorder.app.stream import stream
from anyorder.hub import build_model, save_pretrained
from anyorder.models import family_names, get_family
from anyorder.sampling import edit_job, generate, generation_job, sampling_config
from anyorder.tokenizers.demo_vq import DemoVQ, DemoVQConfig

IN_CI = in_ci()
CHROMIUM = "/usr/bin/chromium"
GRID = 4  # tiny models: 4x4 tokens, 16x16 pixels
# every family's debug model on a GRID x GRID grid with 10 classes (the app serves its DEMO_FAMILIES)
TINY = {f: {"family": f, **get_family(f).debug, "seq_len": GRID * GRID, "num_classes": 10} for f in family_names()}


def _need(module: str):
    """Import an optional test dependency; missing, it skips (outside CI) or fails (CI must run everything)."""
    if IN_CI:
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{module} is not installed (pip install {module})")


# ---- fixtures -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    """Run directories ``demo_<family>`` (model/ + tokenizer/) of the app's demo families, in its order."""
    real = os.environ.get("ANYORDER_APP_RUNS")
    if real:
        return [Path(real) / f"demo_{fam}" for fam in DEMO_FAMILIES]
    root = tmp_path_factory.mktemp("runs")
    out = []
    for fam in DEMO_FAMILIES:
        torch.manual_seed(0)
        model = build_model(TINY[fam]).eval()
        with torch.no_grad():  # the head is zero-initialised; give it weights so the samples vary
            model.transformer.final.head.weight.normal_(0, 0.5)
        save_pretrained(model, root / f"demo_{fam}" / "model")
        torch.manual_seed(1)
        tok = DemoVQ(DemoVQConfig(codebook_size=TINY[fam]["codebook_size"], image_size=GRID * 4, code_dim=8, hidden=16))
        save_pretrained(tok, root / f"demo_{fam}" / "tokenizer")
        out.append(root / f"demo_{fam}")
    return out


@pytest.fixture(scope="module")
def entries(runs) -> list[core.AppModel]:
    return demo_models(runs)


@pytest.fixture(scope="module")
def editable(entries) -> core.AppModel:
    """A served model that edits: known-token decoding (inpainting) on a canvas beyond its grid (outpainting)."""
    return next(e for e in entries if e.spec.can("known_tokens") and e.spec.can("canvas"))


@pytest.fixture(scope="module")
def scan_only(entries) -> core.AppModel:
    """A served model that samples only (one fixed scan order)."""
    return next(e for e in entries if not e.spec.can("known_tokens"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(entries):
    _need("gradio")
    from anyorder.app import ui

    app = ui.build_app(entries)
    port = _free_port()
    t0 = time.perf_counter()
    ui.launch(app, port=port, block=False, quiet=True)
    print(f"app up in {time.perf_counter() - t0:.1f} s")
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture(scope="module")
def client(server):
    gc = _need("gradio_client")
    return gc.Client(server, verbose=False, download_files=tempfile.mkdtemp())


def _reference(entry: core.AppModel, classes: list[int], seed: int, **ui) -> Image.Image:
    """What the app must show for a generation: the library's samples, decoded and tiled."""
    codes = generate(entry.model, classes, core.sampling_settings(entry, **ui), seed=seed)
    return render.tile(render.decode_pixels(entry.tokenizer, codes), entry.scale)


def _controls(entries: list[core.AppModel], entry: core.AppModel, **values) -> list:
    """The sampling controls' values in the order the HTTP API takes them (the app makes one control per
    policy field of the served families: ``ui.setting_infos``); unset ones as the page shows them for
    ``entry``."""
    from anyorder.app import ui

    return [values.get(i.name, ui.control_value(i, entry)) for i in ui.setting_infos(entries)]


def _native(image: Image.Image | str | Path, entry: core.AppModel) -> np.ndarray:
    """An image the app returned (upscaled ``entry.scale`` x) back at native pixels, ``[H, W, 3]`` uint8."""
    arr = np.asarray(Image.open(image).convert("RGB") if not isinstance(image, Image.Image) else image.convert("RGB"))
    return arr[:: entry.scale, :: entry.scale]


def _digit(entry: core.AppModel, seed: int = 0) -> Image.Image:
    """A test input: random pixels at the model's image size, upscaled as the app shows images."""
    S = entry.image_size
    arr = (np.random.default_rng(seed).random((S, S)) * 255).astype(np.uint8)
    return render.tile(render.pil_to_pixels(Image.fromarray(arr), 1), entry.scale)


def _given_cells(order: Image.Image | str, entry: core.AppModel) -> np.ndarray:
    """Token cells the order map marks as given (kept), ``[h, w]`` bool."""
    arr = np.asarray(Image.open(order).convert("RGB") if not isinstance(order, Image.Image) else order)
    cell = entry.downsample * entry.scale
    centres = arr[cell // 2 :: cell, cell // 2 :: cell]
    return (np.abs(centres.astype(int) - round(render.GIVEN * 255)) <= 1).all(-1)


def _kept_pixels_equal(result: np.ndarray, given: np.ndarray, cells: np.ndarray, ds: int) -> bool:
    keep = np.kron(cells, np.ones((ds, ds), bool))
    return bool(np.array_equal(result[keep], given[keep]))


# ---- streaming = the library ------------------------------------------------------------------------------
@pytest.mark.parametrize("family", DEMO_FAMILIES)
def test_streamed_generation_is_generate_step_by_step(entries, family):
    """Each frame adds the tokens of one decoding step, never changes a placed one, and the last is exactly
    ``generate`` with the same seed; a family that decodes one token per step places token t at step t in its
    scan order, a parallel one follows its plan."""
    entry = next(e for e in entries if e.family == family)
    model, T = entry.model, entry.model.seq_len
    policy = sampling_config(family, {"guidance_scale": 2.0})
    if entry.spec.can("parallel"):
        policy = policy.replace(steps=max(2, T // 3))
    classes = [1, 2, 3]
    frames = list(stream(generation_job(model, classes, policy, seed=5)))
    ref = generate(model, classes, policy, seed=5)
    assert frames[-1].final and torch.equal(frames[-1].codes, ref)
    assert frames[0].done == 0 and not frames[0].placed.any()
    plan = policy.plan(T)
    assert [f.done for f in frames[1:-1]] == list(np.cumsum(plan))
    for f in frames:
        assert torch.equal(f.codes[f.placed], ref[f.placed])  # placed tokens are final
    counts = torch.bincount(frames[-1].step[0].flatten(), minlength=len(plan) + 1)[1:]
    assert counts.tolist() == plan
    if not entry.spec.can("parallel"):
        assert torch.equal(frames[-1].step[0].flatten()[model.default_order().cpu()], torch.arange(1, T + 1))


def test_every_class_in_turn_generates_class_i_mod_the_class_count(editable):
    """The picker's "every class in turn" is image i of class i mod C (12 images over the 10 classes: 0..9, 0, 1),
    the library's ``generate`` for those classes with the same seed."""
    C = editable.model.num_classes
    last = list(core.generate_updates(editable, core.EVERY_CLASS, n=12, seed=3, guidance_scale=2.0, steps=4))[-1]
    ref = generate(editable.model, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1], core.sampling_settings(
        editable, guidance_scale=2.0, steps=4), seed=3)
    assert C == 10 and last.final and torch.equal(last.codes, ref)


def test_streamed_edits_are_inpaint_and_outpaint(editable):
    model = editable.model
    h, w = model.grid
    codes = torch.randint(0, model.codebook_size, (2, h, w), generator=torch.Generator().manual_seed(3))
    mask = E.half_mask(model.grid, "left")
    frames = list(stream(edit_job(model, codes, mask, [1], seed=9, guidance_scale=2.0, steps=3)))
    assert torch.equal(frames[-1].codes, E.inpaint(model, codes, mask, 1, guidance_scale=2.0, steps=3, seed=9))
    assert torch.equal(frames[0].placed[0], ~mask)  # the first frame shows the kept tokens only
    assert (frames[-1].step[:, ~mask] == 0).all() and (frames[-1].step[:, mask] > 0).all()
    canvas = torch.zeros(2, h, w + 2, dtype=torch.long)
    canvas[:, :, 2:] = codes
    unknown = torch.zeros(h, w + 2, dtype=torch.bool)
    unknown[:, :2] = True
    frames = list(stream(edit_job(model, canvas, unknown, [1], seed=4)))
    assert torch.equal(frames[-1].codes, E.outpaint(model, codes, 1, left=2, seed=4))


# ---- editing in Python: bad input -----------------------------------------------------------------------------
def test_inpaint_keeps_known_pixels_and_handles_odd_masks(editable, scan_only):
    S, ds, k = editable.image_size, editable.downsample, editable.scale
    image = _digit(editable)
    given = _native(image, editable)
    layer = np.zeros((S * k, S * k, 4), np.uint8)
    layer[: S * k // 3, : S * k // 3, 3] = 255  # a brushed top-left corner
    out = list(core.inpaint_updates(editable, image, [Image.fromarray(layer)], 2, seed=1))[-1]
    cells = E.mask_from_image(torch.from_numpy(layer[::k, ::k, 3] > 0), S, editable.model.grid).numpy()
    result = _native(out.image, editable)
    assert _kept_pixels_equal(result, given, ~cells, ds)
    assert np.array_equal(_given_cells(out.order, editable), ~cells)
    assert f"inpainting {int(cells.sum())} of" in out.status
    # an empty mask returns the input; a full one is plain sampling (= generate with the same seed)
    empty = list(core.inpaint_updates(editable, image, [], 2, seed=1))
    assert len(empty) == 1 and np.array_equal(_native(empty[0].image, editable), given) and "empty" in empty[0].status
    full = np.full_like(layer, 255)
    out = list(core.inpaint_updates(editable, image, [Image.fromarray(full)], 2, seed=1))[-1]
    assert np.array_equal(np.asarray(out.image), np.asarray(_reference(editable, [2], 1)))
    assert "plain class-conditional sampling" in out.status
    # another size is fitted (with a note) and a RAR model refuses with the reason
    odd = image.resize((S * k + 7, S * k - 5))
    out = list(core.inpaint_updates(editable, odd, [], 2, seed=1))[-1]
    assert "resized" in out.status and out.image.size == (S * k, S * k)
    with pytest.raises(ValueError, match="fixed scan order"):
        next(core.inpaint_updates(scan_only, image, [], 0))


# ---- serving the demo runs ------------------------------------------------------------------------------------
def test_demo_runs_are_trained_when_absent_and_said_so(runs, tmp_path, monkeypatch):
    """Without --model the app serves runs/demo_<family> of its demo families; an absent one is trained first with
    `anyorder demo` (here: a stand-in that copies a tiny run) and the log says so; a present one is reused."""
    from anyorder.app import models as app_models

    trained = []

    def fake_run_demo(cfg, progress=True):
        trained.append(cfg.family)
        shutil.copytree(runs[0].parent / f"demo_{cfg.family}", cfg.out_dir)

    monkeypatch.setattr(app_models, "run_demo", fake_run_demo)
    first, *present = DEMO_FAMILIES
    for fam in present:
        shutil.copytree(runs[0].parent / f"demo_{fam}", tmp_path / f"demo_{fam}")
    said = []
    got = app_models.ensure_demo_runs(tmp_path, log=said.append)
    assert trained == [first] and got == [tmp_path / f"demo_{fam}" for fam in DEMO_FAMILIES]
    assert len(said) == 1 and f"anyorder demo --model {first}" in said[0] and "training it now" in said[0]
    assert [e.family for e in demo_models(got)] == list(DEMO_FAMILIES)


def test_cli_app_arguments():
    from anyorder.cli.main import build_parser, main

    args = build_parser().parse_args(["app", "--port", "7999", "--device", "cpu"])
    assert (args.model, args.host, args.port, args.runs) == (None, "127.0.0.1", 7999, "runs")
    assert main(["app", "--tokenizer", "tok"]) == 2  # a tokenizer without a model is an error, not a silent drop


# ---- the HTTP API ------------------------------------------------------------------------------------------
def test_api_generate_and_two_users_at_once(client, entries, editable, scan_only):
    """Two sessions at once are queued (one decode at a time) and each gets its own images, which are the
    library's samples for its own class and seed."""
    gc = _need("gradio_client")
    ui = _controls(entries, editable, guidance_scale=2.0, temperature=1.0, top_k=0, top_p=1.0,
                   steps=editable.model.seq_len)
    other = gc.Client(client.src, verbose=False, download_files=tempfile.mkdtemp())

    def run(c, name, cls, seed):
        job = c.submit(name, cls, 4, *ui, seed, 0, api_name="/generate")
        return job.result(timeout=120), job

    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(run, client, editable.name, 1, 11)
        b = pool.submit(run, other, scan_only.name, 2, 22)
        (img_a, _, status_a), job_a = a.result()
        (img_b, _, status_b), _ = b.result()
    sampling = {"guidance_scale": 2.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "steps": 0}
    assert np.array_equal(np.asarray(Image.open(img_a).convert("RGB")),
                          np.asarray(_reference(editable, [1] * 4, 11, **sampling)))
    assert np.array_equal(np.asarray(Image.open(img_b).convert("RGB")),
                          np.asarray(_reference(scan_only, [2] * 4, 22, **sampling)))
    how = "random orders" if editable.spec.can("parallel") else "scan order"
    assert status_a.startswith("done") and how in status_a and "scan order" in status_b
    # streamed: partial images (some tokens placed) come before the final one; the first one soon after the start
    t0 = time.perf_counter()
    job = client.submit(editable.name, 0, 8, *ui, 1, 20, api_name="/generate")
    job.result(timeout=60)
    total = time.perf_counter() - t0
    partial = [out[2] for out in job.outputs() if 0 < _placed(out[2]) < editable.model.seq_len]
    assert partial, "no partial image was streamed"
    first = float(re.search(r"([0-9.]+) s", partial[0]).group(1))  # seconds since the request started decoding
    print(f"8 images: first partial image {first:.2f} s after the start, all done {total:.2f} s after the click")
    assert first < min(3.0, total)


def test_api_each_session_edits_its_own_last_generation(client, entries, editable, scan_only):
    """"Edit this image" (``/to_editor``) reads the last images of the session that asks (per-session state):
    A generates, then B generates something else, and each one's image # lands in its own editor — the
    library's sample for its own model, class and seed; a session that generated nothing is told so."""
    gc = _need("gradio_client")
    from gradio_client.exceptions import AppError

    def session():
        return gc.Client(client.src, verbose=False, download_files=tempfile.mkdtemp())

    a, b, fresh = session(), session(), session()
    ui = _controls(entries, editable, guidance_scale=2.0, temperature=1.0, top_k=0, top_p=1.0,
                   steps=editable.model.seq_len)  # one token per step
    a.predict(editable.name, 1, 3, *ui, 11, 0, api_name="/generate")  # class 1, 3 images, seed 11, no delay
    b.predict(scan_only.name, 2, 4, *ui, 22, 0, api_name="/generate")  # after A's: the last generation on the server
    editor_a, note_a = a.predict(editable.name, 2, api_name="/to_editor")
    editor_b, note_b = b.predict(scan_only.name, 4, api_name="/to_editor")
    sampling = {"guidance_scale": 2.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    for entry, editor, note, cls, n, seed, pick, kw in (
            (editable, editor_a, note_a, 1, 3, 11, 2,
             {"steps": editable.model.seq_len} if editable.spec.can("parallel") else {}),
            (scan_only, editor_b, note_b, 2, 4, 22, 4, {})):
        codes = generate(entry.model, [cls] * n, seed=seed, **sampling, **kw)
        pixels = render.decode_pixels(entry.tokenizer, codes)[pick - 1 : pick]
        expected = _native(render.tile(pixels, entry.scale), entry)
        assert np.array_equal(_native(editor["background"], entry), expected), entry.name
        assert note.startswith(f"Image #{pick} is in the editor")
    with pytest.raises(AppError, match="generate some images first"):
        fresh.predict(editable.name, 1, api_name="/to_editor")


def _placed(status: str) -> int:
    """Tokens placed so far, from a status line (``... step 3/16, 3/16 tokens ...``); 0 before the first step."""
    m = re.search(r"(\d+)/(\d+) tokens", status)
    return int(m.group(1)) if m else 0


def test_api_upload_and_edit(client, entries, editable, scan_only, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    S, k = editable.image_size, editable.scale
    (tmp_path / "notes.txt").write_text("not a picture")
    with pytest.raises(AppError, match="not an image"):
        client.predict(editable.name, handle_file(str(tmp_path / "notes.txt")), api_name="/upload")
    _digit(editable).resize((S * k + 9, S * k // 2)).save(tmp_path / "wide.png")
    editor, note = client.predict(editable.name, handle_file(str(tmp_path / "wide.png")), api_name="/upload")
    assert "resized" in note and Image.open(editor["background"]).size == (S * k, S * k)
    image = _digit(editable, seed=2)
    image.save(tmp_path / "digit.png")
    layer = np.zeros((S * k, S * k, 4), np.uint8)
    layer[:, S * k // 2 :, 3] = 255  # right half
    Image.fromarray(layer).save(tmp_path / "mask.png")
    value = {"background": handle_file(str(tmp_path / "digit.png")),
             "layers": [handle_file(str(tmp_path / "mask.png"))], "composite": None}
    ui = [*_controls(entries, editable, guidance_scale=2.0, temperature=1.0, top_k=0, top_p=1.0, steps=2),
          3, 0]  # seed, delay
    img, order, status = client.predict(editable.name, value, 4, *ui, api_name="/inpaint")
    cells = E.half_mask(editable.model.grid, "right").numpy()
    assert _kept_pixels_equal(_native(img, editable), _native(image, editable), ~cells, editable.downsample)
    assert np.array_equal(_given_cells(order, editable), ~cells) and status.startswith("done")
    img, _, status = client.predict(editable.name, value, "left", 2, 4, *ui, api_name="/outpaint")
    out = _native(img, editable)
    ds = editable.downsample
    assert out.shape[:2] == (S, S + 2 * ds) and np.array_equal(out[:, 2 * ds :], _native(image, editable))
    with pytest.raises(AppError, match=f"{scan_only.spec.display_name} offers sampling only"):
        client.predict(scan_only.name, value, 4, *ui, api_name="/inpaint")


# ---- a real browser -----------------------------------------------------------------------------------------
def _browser():
    if not Path(CHROMIUM).exists():
        msg = f"{CHROMIUM} not found: install Debian's chromium (bash .ci/install_browser.sh)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return _need("playwright.sync_api")


def _wait_done(page, status: str, timeout_s: float = 90.0, accept: tuple[str, ...] = ()) -> str:
    """Wait until the status line ``status`` says done (or starts with one of ``accept``); an error toast or a
    timeout fails with what the page shows."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        text = page.inner_text(status)
        if text.startswith(("done", *accept)):
            return text
        toasts = page.locator(".toast-body")
        if toasts.count():
            pytest.fail(f"the page shows an error: {toasts.first.inner_text()!r} (status {text!r})")
        page.wait_for_timeout(100)
    pytest.fail(f"{status} not done after {timeout_s:.0f} s: {page.inner_text(status)!r}")


def test_browser_generate_and_inpaint(server, editable):
    """Headless Chromium loads the page, generates, sends image #1 to the editor, brushes a stroke and inpaints."""
    sync_api = _browser()
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=args,
                                                   viewport={"width": 1280, "height": 1000})
        try:
            page = ctx.new_page()
            page.goto(server, wait_until="load")
            page.wait_for_selector("#generate-btn", timeout=60_000)
            assert page.title() == "anyorder"

            def fetch(selector: str) -> Image.Image:
                src = page.locator(f"{selector} img").get_attribute("src")
                return Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB")

            page.click("#generate-btn")  # defaults: 8 images of the first class, seed 0, the model's settings
            _wait_done(page, "#gen-status")
            ref = _reference(editable, [0] * 8, 0, steps=0)
            assert np.array_equal(np.asarray(fetch("#gen-result")), np.asarray(ref))

            page.click("#to-editor-btn")
            page.wait_for_selector("#edit-note :text('in the editor')", timeout=30_000)
            status = ""
            for _ in range(3):  # a stroke made before the editor's canvas is live is lost: brush again
                page.wait_for_timeout(1000)  # the editor draws its canvas after the value arrives
                box = page.locator("#editor canvas").first.bounding_box()
                x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
                page.mouse.move(x - 40, y - 40)
                page.mouse.down()
                for i in range(10):
                    page.mouse.move(x - 40 + 4 * i, y - 40 + 2 * i, steps=2)
                page.mouse.up()
                page.wait_for_timeout(500)  # let the editor send its layers before the click
                before = page.inner_text("#edit-status")
                page.click("#inpaint-btn")
                for _ in range(50):  # the status of this click, not the previous one
                    if page.inner_text("#edit-status") != before:
                        break
                    page.wait_for_timeout(100)
                status = _wait_done(page, "#edit-status", accept=("The mask is empty",))
                if status.startswith("done"):
                    break
            assert status.startswith("done"), f"the brushed mask never reached the server: {status!r}"
            result, order = fetch("#result"), fetch("#order")
            given = _given_cells(order, editable)
            h, w = editable.model.grid
            m = h * w - int(given.sum())
            assert 0 < m < h * w and f"inpainting {m} of {h * w} tokens" in status
            first = _native(ref, editable)[: editable.image_size, : editable.image_size]
            assert _kept_pixels_equal(_native(result, editable), first, given, editable.downsample)
            if os.environ.get("ANYORDER_WRITE_DOCS") == "1":
                docs = Path(__file__).resolve().parents[1] / "docs"
                page.screenshot(path=str(docs / "app_inpaint.png"), full_page=True)
                page.get_by_role("tab", name="Generate").click()
                page.screenshot(path=str(docs / "app_screenshot.png"), full_page=True)
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)
