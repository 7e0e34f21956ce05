"""Official checkpoints end to end (issue 4): presets, ImageNet class names, save/load round trips, the
official fixture files, offline hub ids, and every way a checkpoint file can be bad."""

from __future__ import annotations

import json
import os
import pickle
import shlex
import sys
import types
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import debug_model, fixture_dir, fixture_geometry
from safetensors.torch import load_file

from anyorder import hub as checkpoints
from anyorder.data.classes import class_index, imagenet_classes
from anyorder.hub import build_model, from_pretrained, load_official, save_pretrained
from anyorder.io import CheckpointError, load_state_dict
from anyorder.models import PRESETS, AnyOrderModel, family_names, get_family
from anyorder.models.randar import RandAR
from anyorder.models.rar import RAR
from anyorder.nn.orders import random_orders
from anyorder.sampling.policy import sampling_config
from anyorder.tokenizers.llamagen_vq import LlamaGenVQConfig
from anyorder.tokenizers.maskgit_vqgan import MaskGITVQGANConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread beats two contending ones


def tiny_model(family: str, seed: int = 0) -> AnyOrderModel:
    """The family's debug model with noise on every parameter (so zero-initialised layers do not hide a bad load)."""
    return debug_model(family, seed, noise=0.05)


def official_state_dict(model: AnyOrderModel) -> dict[str, torch.Tensor]:
    """Our weights under the official names (the family's key map; the contract tests check the names against the
    official fixture checkpoints)."""
    keys = get_family(model.family).official.keys
    return {keys.to_official(k): v.clone() for k, v in model.state_dict().items()}


def sample_inputs(model: AnyOrderModel, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, model.codebook_size, (batch, model.seq_len), generator=g)
    classes = torch.randint(0, model.num_classes, (batch,), generator=g)
    return codes, classes, random_orders(batch, model.seq_len, generator=g)


# ---- ImageNet class names ------------------------------------------------------------------------


def test_imagenet_class_file_is_package_data() -> None:
    f = resources.files("anyorder") / "resources" / "imagenet_classes.txt"
    assert f.is_file()
    lines = f.read_text().splitlines()
    assert len(lines) == 1000 and all(line.strip() == line and line for line in lines)


@pytest.mark.parametrize("idx, name", [(0, "tench, Tinca tinca"), (1, "goldfish, Carassius auratus"),
                                       (207, "golden retriever"), (360, "otter"), (980, "volcano"),
                                       (999, "toilet tissue, toilet paper, bathroom tissue")])
def test_imagenet_class_names(idx: int, name: str) -> None:
    names = imagenet_classes()
    assert len(names) == 1000
    assert names[idx] == name
    assert names[388].startswith("giant panda, panda, panda bear")


def test_class_index_by_name_and_number() -> None:
    assert class_index("golden retriever", 1000) == 207
    assert class_index("Golden_Retriever", 1000) == 207
    assert class_index("goldfish", 1000) == 1
    assert class_index("Carassius auratus", 1000) == 1
    assert class_index("giant panda", 1000) == 388
    assert class_index("volcano", 1000) == 980
    assert class_index(" 207 ", 1000) == 207
    with pytest.raises(ValueError, match=r"class id 1000 out of range.*0\.\.999"):
        class_index("1000", 1000)
    with pytest.raises(ValueError, match="unknown class name 'no such animal'"):
        class_index("no such animal", 1000)
    with pytest.raises(ValueError, match=r"ImageNet models only.*0\.\.9"):
        class_index("goldfish", 10)


# ---- presets ------------------------------------------------------------------------------------------

PARAMS = {"rar_b": 261e6, "rar_l": 461e6, "rar_xl": 955e6, "rar_xxl": 1499e6,  # RAR Table 1
          "randar_l": 342.9e6, "randar_xl": 774.7e6}  # LlamaGen GPT-L / GPT-XL (RandAR 0.3B / 0.7B)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_preset_parameter_counts_on_meta_device(name: str) -> None:
    with torch.device("meta"):
        model = build_model(name)
    n = sum(p.numel() for p in model.parameters())
    assert all(p.is_meta for p in model.parameters())
    assert abs(n - PARAMS[name]) / PARAMS[name] < 0.01, f"{name}: {n / 1e6:.1f}M"


# the tokenizer each released generator was trained with (the presets name it); defaults = the released ones
RELEASED_TOKENIZERS = {"maskgit-vqgan": MaskGITVQGANConfig(), "llamagen-vq": LlamaGenVQConfig()}


@pytest.mark.parametrize("name", sorted(n for n, p in PRESETS.items() if p.tokenizer in RELEASED_TOKENIZERS))
def test_release_presets_fit_their_tokenizer_and_family_sampling(name: str) -> None:
    """A release preset predicts its tokenizer's codes on its tokenizer's grid, and its sampling settings are
    settings of its own family, guided (the values themselves are cited in the family's ``spec.py``;
    test_cli_sample checks that they reach the sampler)."""
    p = PRESETS[name]
    tok = RELEASED_TOKENIZERS[p.tokenizer]
    assert p.tokenizer == get_family(p.family).default_tokenizer
    assert p.model["codebook_size"] == tok.codebook_size
    assert p.model["seq_len"] == (p.image_size // tok.downsample) ** 2
    assert sampling_config(p.family, p.sampling).guidance().enabled


# ---- save_pretrained / from_pretrained round trip ----------------------------------------------------


@pytest.mark.parametrize("family", family_names())
def test_save_writes_two_files_and_the_weights_file_loads_alone(family: str, tmp_path: Path) -> None:
    """(The round trip itself is a contract test.) The directory holds the weights and config.json with the
    family and the ``extra`` metadata; the weights file alone loads with the config.json beside it."""
    model = tiny_model(family)
    out = save_pretrained(model, tmp_path / "m", extra={"note": "round trip"})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["family"] == family and cfg["extra"] == {"note": "round trip"}
    again = from_pretrained(out / "model.safetensors")
    assert type(again) is type(model) and again.config == model.config
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


# ---- the official fixture files ----------------------------------------------------------------------


def test_rar_fixture_loads_from_dir_and_from_file() -> None:
    d = fixture_dir("rar")
    by_dir = from_pretrained(d).eval()  # picks checkpoint.bin, not cases.safetensors
    by_file = from_pretrained(d / "checkpoint.bin", config=d / "config.json").eval()
    by_dict = from_pretrained(d / "checkpoint.bin", config=json.loads((d / "config.json").read_text()))
    geo = fixture_geometry("rar")
    assert isinstance(by_dir, RAR)
    assert (by_dir.seq_len, by_dir.codebook_size, by_dir.num_classes) == (
        geo["seq_len"], geo["codebook_size"], geo["num_classes"])
    for other in (by_file, by_dict):
        assert all(torch.equal(v, other.state_dict()[k]) for k, v in by_dir.state_dict().items())
    cases = load_file(str(d / "cases.safetensors"))
    gen = torch.gather(cases["train_input_ids"], 1, cases["train_orders"])
    with torch.no_grad():
        logits = by_dir(gen, cases["train_condition"], cases["train_orders"])
    torch.testing.assert_close(logits, cases["train_logits"], atol=1e-5, rtol=1e-4)


def test_randar_fixture_loads_from_dir_and_from_file() -> None:
    d = fixture_dir("randar")
    by_dir = from_pretrained(d).eval()  # picks checkpoint.safetensors, not cases.safetensors
    by_file = from_pretrained(d / "checkpoint.safetensors", config=d / "config.json").eval()
    geo = fixture_geometry("randar")
    assert isinstance(by_dir, RandAR)
    assert (by_dir.seq_len, by_dir.codebook_size, by_dir.num_classes) == (
        geo["seq_len"], geo["codebook_size"], geo["num_classes"])
    assert all(torch.equal(v, by_file.state_dict()[k]) for k, v in by_dir.state_dict().items())
    cases = load_file(str(d / "cases.safetensors"))
    with torch.no_grad():
        logits = by_dir.logits(cases["train_idx"], cases["train_cond"], cases["train_orders"])
    torch.testing.assert_close(logits, cases["train_logits"], atol=1e-5, rtol=1e-4)


def test_directory_with_several_checkpoints_is_ambiguous(tmp_path: Path) -> None:
    model = tiny_model("rar")
    (tmp_path / "config.json").write_text(json.dumps(model.config_dict()))
    torch.save(official_state_dict(model), tmp_path / "a.bin")
    torch.save(official_state_dict(model), tmp_path / "b.bin")
    with pytest.raises(FileNotFoundError, match=r"a\.bin, b\.bin"):
        from_pretrained(tmp_path)
    os.replace(tmp_path / "b.bin", tmp_path / "checkpoint.bin")  # a conventional name settles it
    assert isinstance(from_pretrained(tmp_path), RAR)


# ---- hub ids, offline ----------------------------------------------------------------------------------


def test_hub_id_offline_names_the_file_and_where_to_put_it(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def offline(repo_id: str, filename: str, **kw: Any) -> str:
        calls.append((repo_id, filename))
        raise OSError("network is unreachable (test: offline)")

    fake = types.ModuleType("huggingface_hub")
    fake.hf_hub_download = offline  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    with pytest.raises(RuntimeError) as err:
        from_pretrained("yucornetto/RAR", filename="rar_b.bin")
    msg = str(err.value)
    assert calls == [("yucornetto/RAR", "rar_b.bin")]
    assert "rar_b.bin" in msg and "yucornetto/RAR" in msg
    assert "https://huggingface.co/yucornetto/RAR/resolve/main/rar_b.bin" in msg and "local path" in msg


def test_hub_id_without_huggingface_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails: no network touched either
    with pytest.raises(RuntimeError, match=r"(?s)rar_b\.bin.*huggingface_hub.*resolve/main/rar_b\.bin"):
        from_pretrained("yucornetto/RAR", filename="rar_b.bin")
    with pytest.raises(ValueError, match="needs a filename"):
        from_pretrained("yucornetto/RAR")


# ---- bad files ----------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this would run ``os.system`` (here: create a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_and_never_runs(writer: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    model = tiny_model("rar")
    obj = {**official_state_dict(model), "evil": _Payload(marker)}
    path = tmp_path / "rar_evil.bin"
    if writer == "torch.save":
        torch.save(obj, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    with pytest.raises(CheckpointError, match="refused") as err:
        from_pretrained(path, config=model.config_dict())
    assert str(path) in str(err.value)
    with pytest.raises(CheckpointError):
        load_state_dict(path)
    assert not marker.exists()


def test_truncated_bin_names_the_file(tmp_path: Path) -> None:
    model = tiny_model("rar")
    good = tmp_path / "good.bin"
    torch.save(official_state_dict(model), good)
    data = good.read_bytes()
    bad = tmp_path / "truncated.bin"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as err:
        from_pretrained(bad, config=model.config_dict())
    assert str(bad) in str(err.value)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError) as err:
        load_official(garbage, config=model.config_dict())
    assert str(garbage) in str(err.value)


def test_corrupt_safetensors_names_the_file(tmp_path: Path) -> None:
    model = tiny_model("randar")
    out = save_pretrained(model, tmp_path / "m")
    weights = out / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="corrupt") as err:
        from_pretrained(out)
    assert str(weights) in str(err.value)
    weights.write_bytes(b"{{{{ definitely not safetensors")
    with pytest.raises(CheckpointError) as err:
        from_pretrained(out)
    assert str(weights) in str(err.value)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        from_pretrained(tmp_path / "nope.bin", preset="rar_b")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_official(tmp_path / "nope.safetensors", preset="randar_l")
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        from_pretrained("./not/here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        from_pretrained(tmp_path / "empty")
    model = tiny_model("rar")
    torch.save(official_state_dict(model), tmp_path / "no_config.bin")
    with pytest.raises(CheckpointError, match="no hyper-parameters"):
        from_pretrained(tmp_path / "no_config.bin")


def test_width_mismatch_names_keys_and_both_shapes(tmp_path: Path) -> None:
    model = tiny_model("rar")  # dim 32
    torch.save(official_state_dict(model), tmp_path / "rar_a.bin")
    wider = {**model.config_dict(), "dim": 48, "depth": 3}
    with pytest.raises(CheckpointError) as err:
        from_pretrained(tmp_path / "rar_a.bin", config=wider)
    msg = str(err.value)
    assert str(tmp_path / "rar_a.bin") in msg and "does not fit" in msg
    assert "cls_token: checkpoint (1, 1, 32) vs model (1, 1, 48)" in msg
    assert "missing keys" in msg and "transformer.blocks.2." in msg


def test_rar_b_weights_with_rar_l_preset_on_meta_device() -> None:
    with torch.device("meta"):
        rar_b = build_model("rar_b")
        rar_l = build_model("rar_l")
    sd = official_state_dict(rar_b)  # the layout of the released rar_b.bin, without the 1 GB
    with pytest.raises(CheckpointError) as err:
        checkpoints._load_into(rar_l, sd, "rar_b.bin")
    msg = str(err.value)
    assert msg.startswith("rar_b.bin does not fit")
    assert "cls_token: checkpoint (1, 1, 768) vs model (1, 1, 1024)" in msg
    assert "transformer.blocks.0.attn.qkv.weight: checkpoint (2304, 768) vs model (3072, 1024)" in msg


def test_randar_depth_mismatch(tmp_path: Path) -> None:
    model = tiny_model("randar")
    save_file_dir = save_pretrained(model, tmp_path / "m")
    cfg = json.loads((save_file_dir / "config.json").read_text())
    cfg["depth"] = 1
    (save_file_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"unexpected keys: transformer\.blocks\.1\."):
        from_pretrained(save_file_dir)


def test_unknown_config_keys_are_named(tmp_path: Path) -> None:
    out = save_pretrained(tiny_model("rar"), tmp_path / "m")
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "hiden_size": 64}))
    with pytest.raises(ValueError, match="hiden_size"):
        from_pretrained(out)
    (out / "config.json").write_text(json.dumps({**cfg, "family": "gpt"}))
    with pytest.raises(ValueError, match="unknown model family 'gpt'"):
        from_pretrained(out)
    (out / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        from_pretrained(out)
