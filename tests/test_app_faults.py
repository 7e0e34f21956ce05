"""The web app's handling of what went wrong when tried (issue 22): 16-bit uploads, seeds beyond 63 bits,
its temporary frame folder on SIGTERM / SIGINT. No gradio needed: the functions are called directly."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from anyorder.app import core


def _entry(size: int = 12) -> SimpleNamespace:
    """What ``load_upload`` reads of a served model: its image size, display scale and tokenizer channels."""
    return SimpleNamespace(image_size=size, scale=1, tokenizer=SimpleNamespace(in_channels=3))


def test_a_16_bit_upload_is_scaled_not_white(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (12, 12), dtype=np.uint8)
    Image.fromarray(arr.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # I;16: 257 v is v in 8 bits
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    shown, notes = core.load_upload(str(tmp_path / "deep.png"), _entry())
    assert notes == [] and np.array_equal(np.asarray(shown), np.repeat(arr[..., None], 3, axis=2))


def test_a_float_upload_out_of_range_is_refused_by_name(tmp_path):
    Image.fromarray(np.full((12, 12), -2.0, np.float32)).save(tmp_path / "hdr.tif")
    with pytest.raises(ValueError, match=r"hdr\.tif: floating-point pixels in \[-2, -2\], not \[0, 1\]"):
        core.load_upload(str(tmp_path / "hdr.tif"), _entry())
    buf = io.BytesIO()  # a float picture in [0, 1] is fine
    Image.fromarray(np.full((12, 12), 0.5, np.float32)).save(buf, format="TIFF")
    (tmp_path / "half.tif").write_bytes(buf.getvalue())
    shown, _ = core.load_upload(str(tmp_path / "half.tif"), _entry())
    assert (np.asarray(shown) == 128).all()  # rint(0.5 * 255) = 128


def test_to_8bit_rounds_to_the_nearest_of_256_levels():
    from fractions import Fraction

    from anyorder.io.images import to_8bit

    values = np.array([0, 128, 129, 32767, 32768, 65406, 65407, 65535], np.uint16)
    got = np.asarray(to_8bit(Image.fromarray(values.reshape(2, 4))))
    assert got.ravel().tolist() == [round(Fraction(int(v) * 255, 65535)) for v in values]


# ------------------------------------------------------------------------ the frame folder on SIGTERM / SIGINT
_CHILD = """
import signal, sys
from pathlib import Path
if sys.argv[1] == "chained":  # a handler set before the app's: it must still run, after the folder is gone
    def before(signum, frame):
        Path(sys.argv[2]).write_text(str(Path(sys.argv[3]).read_text() and files.dir.exists()))
        sys.exit(7)
    signal.signal(signal.SIGINT, before)
from anyorder.app.ui import _ImageFiles
from PIL import Image
files = _ImageFiles()
files(Image.new("RGB", (4, 4)))
Path(sys.argv[3]).write_text(str(files.dir))
signal.pause()
"""


def test_the_frame_folder_is_removed_on_sigterm_and_sigint(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(core.__file__).parents[2])}
    runs = {  # name: (how, signal, the exit status expected)
        "sigterm": ("plain", signal.SIGTERM, -signal.SIGTERM),  # default action: killed by the signal
        "chained": ("chained", signal.SIGINT, 7),  # SIGINT: the handler set before ran (and exited 7)
    }
    procs = {name: subprocess.Popen([sys.executable, "-c", _CHILD, how, str(tmp_path / f"{name}.marker"),
                                     str(tmp_path / f"{name}.dir")], env=env, stderr=subprocess.PIPE)
             for name, (how, _, _) in runs.items()}
    try:
        for name, (_, sig, status) in runs.items():
            where = tmp_path / f"{name}.dir"
            deadline = time.monotonic() + 120
            while not (where.exists() and where.read_text()) and procs[name].poll() is None:
                assert time.monotonic() < deadline, f"{name}: the child did not start"
                time.sleep(0.05)
            folder = Path(where.read_text())
            assert folder.is_dir() and any(folder.glob("*.png")), name
            procs[name].send_signal(sig)
            assert procs[name].wait(60) == status, (name, procs[name].stderr.read().decode()[-2000:])
            assert not folder.exists(), f"{name}: {folder} outlived the signal"
        assert (tmp_path / "chained.marker").read_text() == "False"  # folder already removed when it ran
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
