"""The command line on what went wrong when tried (issue 22): overrides after flags, seeds beyond 63 bits,
unwritable outputs and a full disk."""

from __future__ import annotations

import pytest

import anyorder.cli.train as cli_train
from anyorder.cli.main import main


def _captured_args(monkeypatch, argv: list[str]):
    seen = {}

    def fake(args):
        seen["args"] = args
        return 0

    monkeypatch.setattr(cli_train, "cmd_train", fake)  # the parser is built inside main: it picks this up
    monkeypatch.setattr(cli_train, "cmd_demo", fake)
    assert main(argv) == 0
    return seen["args"]


def test_train_takes_overrides_after_and_between_flags(monkeypatch):
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
