"""The command line on what went wrong when tried (issue 22): overrides after flags, seeds beyond 63 bits,
unwritable outputs and a full disk."""

from __future__ import annotations

import numpy as np
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


# --------------------------------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("key", ["train.seed", "data.seed", "sample.seed"])
@pytest.mark.parametrize("value", [2**32, 2**63, -1])
def test_config_seeds_that_would_wrap_are_refused_before_any_work(monkeypatch, capsys, key, value):
    monkeypatch.setattr(cli_train, "run_demo", lambda *a, **k: pytest.fail("the run started"))
    assert main(["demo", "--quiet", f"{key}={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"'{key}'" in err and str(value) in err and "0..4294967295" in err


def test_check_seed_and_the_argparse_type():
    import argparse

    from anyorder.io.seeds import check_seed, seed_arg

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
    import torch

    from anyorder.sampling.batch import sample_npz

    with pytest.raises(ValueError, match="--seed must be in 0..4294967295"):
        sample_npz(None, None, tmp_path / "s.npz", torch.zeros(2, dtype=torch.long), batch_size=1, seed=2**32,
                   sampling={})
    assert not list(tmp_path.iterdir())
