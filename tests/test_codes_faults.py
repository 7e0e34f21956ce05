"""``anyorder train`` on a pretokenized folder that went wrong (issue 22): a codes.npy or labels.npy cut short,
a meta.json that disagrees with the arrays. Each is refused when the folder is opened, naming the file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_train_data import write_folder

from anyorder.cli.main import main
from anyorder.data.codes import open_codes


def _cut(name: str, keep: float):
    def change(d):
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: int(len(data) * keep)])
    return change


def _meta(**values):
    def change(d):
        meta = json.loads((d / "meta.json").read_text())
        (d / "meta.json").write_text(json.dumps({**meta, **values}))
    return change


FAULTS = {  # name: (what is done to a good folder, words of the error; every message names the file)
    "codes.npy cut in its data": (_cut("codes.npy", 0.7), r"codes\.npy: truncated: its header says uint16 "
                                                          r"\[30, 2, 4, 4\] \(1920 bytes of data\), the file holds"),
    "codes.npy cut in its header": (_cut("codes.npy", 0.05), r"codes\.npy: not a readable \.npy file"),
    "codes.npy empty": (_cut("codes.npy", 0.0), r"codes\.npy: not a readable \.npy file .*0 bytes"),
    "labels.npy cut": (_cut("labels.npy", 0.8), r"labels\.npy: truncated: its header says int64 \[30\]"),
    "meta.json cut": (_cut("meta.json", 0.5), r"meta\.json: invalid JSON"),
    "meta.json a list": (lambda d: (d / "meta.json").write_text("[1, 2]"), r"meta\.json: must be a JSON object"),
    "meta N": (_meta(num_images=31), r"meta\.json says 31 images but codes\.npy \(30, 2, 4, 4\) has 30"),
    "meta N as text": (_meta(num_images="30"), r"meta\.json: num_images must be an integer, got '30'"),
    "meta grid": (_meta(grid=[8, 2]), r"meta\.json says grid \[8, 2\] but codes\.npy is \(30, 2, 4, 4\)"),
    "meta codebook": (_meta(codebook_size=8), r"codes\.npy: code id 1[0-5], outside the codebook of 8 that "
                                              r"meta\.json names"),
    "meta dtype": (_meta(codes={"dtype": "int32"}), r"meta\.json says codes\.dtype int32 but codes\.npy holds uint16"),
    "meta labels": (_meta(labels={"min": 0, "max": 999}), r"meta\.json says labels .* but labels\.npy holds "
                                                          r"\{'min': 0, 'max': 2\}"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_broken_folder_is_refused_when_opened(tmp_path, fault):
    change, words = FAULTS[fault]
    write_folder(tmp_path / "d")
    open_codes(tmp_path / "d")  # the good folder opens
    change(tmp_path / "d")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'd'}/.*{words}"):
        open_codes(tmp_path / "d")


@pytest.mark.parametrize("fault", ["codes.npy empty", "meta.json a list", "meta codebook"])
def test_train_says_it_in_one_line(tmp_path, capsys, fault):
    write_folder(tmp_path / "d")
    FAULTS[fault][0](tmp_path / "d")
    assert main(["train", "--config", "demo_randar", f"data.source={tmp_path / 'd'}", "--out",
                 str(tmp_path / "run"), "--quiet", "train.steps=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"anyorder train: error: {tmp_path / 'd'}/") and "\n" not in err


def test_a_batch_with_a_code_beyond_the_codebook_is_refused_when_read(tmp_path):
    codes = write_folder(tmp_path / "d", n=5000, k=16)
    codes[2, 1, 2, 3] = 16  # one bad id, in an image the spot check at opening does not read (it opens)
    np.save(tmp_path / "d" / "codes.npy", codes)
    src = open_codes(tmp_path / "d")
    ok = src.gather(np.array([0, 1]), np.array([0, 1]))
    assert torch.equal(ok[1], torch.from_numpy(codes[1, 1].astype(np.int64).ravel()))
    with pytest.raises(ValueError, match="code id 16, outside the codebook of 16"):
        src.gather(np.array([3, 2]), np.array([0, 1]))
