"""The command line on what went wrong when tried (issue 22): overrides after flags, seeds beyond 63 bits,
unwritable outputs and a full disk."""

from __future__ import annotations

import argparse
import errno
import os
import tempfile

import numpy as np
import pytest
import torch
from test_tokenize import _demo_tokenizer, _folder

import anyorder.cli.eval as cli_eval
import anyorder.cli.tokenize as cli_tok
import anyorder.cli.train as cli_train
import anyorder.io.checkpoint as ckpt
from anyorder.cli.main import main
from anyorder.io import atomic_torch_save
from anyorder.io.outputs import describe_os_error, ensure_writable
from anyorder.io.seeds import check_seed, seed_arg
from anyorder.sampling.batch import sample_npz


def _captured_args(monkeypatch, argv: list[str]):
    seen = {}

    def fake(args):
        seen["args"] = args
        return 0

    monkeypatch.setattr(cli_train, "cmd_train", fake)  # the parser is built inside main: it picks this up
    monkeypatch.setattr(cli_train, "cmd_demo", fake)
    assert main(argv) == 0
    return seen["args"]


def test_train_takes_overrides_after_and_between_flags(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the run's default out_dir is relative
    args = _captured_args(monkeypatch, ["train", "--quiet", "data.source=mnist", "--fresh", "train.steps=60",
                                        "--threads", "1", "model.depth=1", "train.steps=61"])
    assert args.quiet and args.fresh and args.threads == 1
    assert args.overrides == ["data.source=mnist", "train.steps=60", "model.depth=1", "train.steps=61"]
    cfg = cli_train._run_config(args, "train")
    assert cfg.train.steps == 61 and cfg.data.source == "mnist" and cfg.model["depth"] == 1  # the last one wins
    args = _captured_args(monkeypatch, ["demo", "train.steps=5", "--quiet", "model.depth=1"])
    assert args.overrides == ["train.steps=5", "model.depth=1"]


def test_unknown_words_are_still_refused(monkeypatch, capsys):
    for argv in (["train", "--quiet", "data.source=mnist", "--bogus"], ["train", "a=1", "--quiet", "stray"],
                 ["eval", "x.npz", "a.b=1"]):
        with pytest.raises(SystemExit) as info:
            _captured_args(monkeypatch, argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "unrecognized arguments" in err and argv[-1] in err and "a=1 " not in err


# --------------------------------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("key", ["train.seed", "data.seed", "sample.seed"])
@pytest.mark.parametrize("value", [2**32, 2**63, -1])
def test_config_seeds_that_would_wrap_are_refused_before_any_work(monkeypatch, capsys, key, value):
    monkeypatch.setattr(cli_train, "run_demo", lambda *a, **k: pytest.fail("the run started"))
    assert main(["demo", "--quiet", f"{key}={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"'{key}'" in err and str(value) in err and "0..4294967295" in err


def test_check_seed_and_the_argparse_type():
    assert check_seed(0, "--seed") == 0 and check_seed(2**32 - 1, "--seed") == 2**32 - 1
    assert check_seed(np.int64(5), "--seed") == 5
    for bad in (2**32, 2**63, -1, True, 1.0, "3", None):
        with pytest.raises(ValueError, match="^--seed must be"):
            check_seed(bad, "--seed")
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=seed_arg, default=0)
    assert parser.parse_args(["--seed", "4294967295"]).seed == 2**32 - 1
    for bad in ("4294967296", "-3", "1e3", "x"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--seed", bad])


def test_sample_npz_refuses_a_seed_that_would_wrap(tmp_path):
    with pytest.raises(ValueError, match="--seed must be in 0..4294967295"):
        sample_npz(None, None, tmp_path / "s.npz", torch.zeros(2, dtype=torch.long), batch_size=1, seed=2**32,
                   sampling={})
    assert not list(tmp_path.iterdir())


# -------------------------------------------------------------------- unwritable outputs and a full disk
# Tests may run as root, which ignores permissions: an output under a regular FILE stands for a folder that
# cannot be written; a full disk is an OSError(ENOSPC) raised where the bytes are written.


def _one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    for w in words:
        assert w in err, (w, err)
    return err


@pytest.fixture
def blocked(tmp_path):
    (tmp_path / "file.txt").write_text("a regular file")
    return tmp_path / "file.txt" / "sub"


def test_tokenize_eval_train_check_their_output_before_any_work(monkeypatch, capsys, tmp_path, blocked):
    def never(*a, **k):
        pytest.fail("the work started before the output was checked")

    monkeypatch.setattr(cli_tok, "pretokenize", never)
    monkeypatch.setattr(cli_eval, "evaluate", never)
    monkeypatch.setattr(cli_eval, "make_reference", never)
    monkeypatch.setattr(cli_train, "open_codes", never)
    monkeypatch.setattr(cli_train, "run_demo", never)
    runs = [
        ["tokenize", "--tokenizer", "t", "--data", "d", "--out", str(blocked)],
        ["eval", "s.npz", "--ref", "r.npz", "--out", str(blocked / "m.json")],
        ["eval", "--make-ref", "digits:test", "--out", str(blocked / "ref.npz")],
        ["train", "data.source=mnist", "--out", str(blocked / "run")],
        ["demo", "--quiet", "--out", str(blocked / "run")],
    ]
    for argv in runs:
        assert main(argv) == 2, argv
        _one_line_error(capsys, f"anyorder {argv[0]}: error: {blocked}", "cannot be written",
                        f"{tmp_path / 'file.txt'} is a file, not a folder")
    (tmp_path / "dir.json").mkdir()
    assert main(["eval", "s.npz", "--ref", "r.npz", "--out", str(tmp_path / "dir.json")]) == 2
    _one_line_error(capsys, "dir.json", "must be a file, and a folder is there")


def test_ensure_writable_reports_a_read_only_folder(monkeypatch, tmp_path):
    assert ensure_writable(tmp_path / "new" / "x.png") == tmp_path / "new" / "x.png"
    assert (tmp_path / "new").is_dir() and list((tmp_path / "new").iterdir()) == []  # no check file left

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "ro"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OSError) as info:
        ensure_writable(tmp_path / "ro", folder=True, what="--out")
    assert describe_os_error(info.value) == f"{tmp_path / 'ro'}: --out cannot be written (Read-only file system)"


def test_a_full_disk_is_one_line_naming_the_file(monkeypatch, capsys, tmp_path):
    _folder(tmp_path / "src", per_class=1, bad=False)
    _demo_tokenizer(tmp_path / "tok")

    def full(fd):  # the disk fills up: the kernel reports ENOSPC when the data is flushed, naming no file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt.os, "fsync", full)
    out = tmp_path / "out"
    assert main(["tokenize", "--tokenizer", str(tmp_path / "tok"), "--data", str(tmp_path / "src"), "--out",
                 str(out), "--aug", "none", "--resolution", "8", "--workers", "0", "--quiet"]) == 2
    _one_line_error(capsys, f"anyorder tokenize: error: {out / 'parts' / 'part-00000.npz'}: No space left on device",
                    "(the disk is full: free some space or write elsewhere)")
    assert [p.name for p in (out / "parts").iterdir()] == []  # no temporary file left behind


def test_torch_save_on_a_full_disk_names_the_file(monkeypatch, capsys, tmp_path):
    real = os.fdopen

    class Filling:  # a file that takes 1000 bytes, then reports a full disk (as write(2) does)
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            if self.n + len(b) > 1000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.n += len(b)
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(ckpt.os, "fdopen", lambda fd, mode: Filling(real(fd, mode)))
    with pytest.raises(OSError) as info:
        atomic_torch_save(tmp_path / "last.pt", {"w": torch.zeros(10_000)})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []

    def save_like_train(args):  # what the CLI shows when torch.save's error reaches it unwrapped
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None

    monkeypatch.setattr(cli_train, "cmd_train", save_like_train)
    assert main(["train", "data.source=mnist"]) == 2
    _one_line_error(capsys, "No space left on device (the disk is full", "while torch.save wrote a file")
