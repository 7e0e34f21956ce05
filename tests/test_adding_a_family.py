"""docs/ADDING_A_FAMILY.md, proven: a family defined in this file — a RandAR subclass with its own name, its own
sampling policy (one extra setting, used by the decode loop), capabilities, an official format, a preset, a
debug config and a run config — is registered at run time and goes through build -> training -> save / load ->
generate -> editing -> ``anyorder train`` / ``anyorder sample`` and the contract tests, without a line of the
library changed. Unregistered, it is gone from the registry and the command line again."""

from __future__ import annotations

import contextlib
import inspect
import json
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import test_family_contract as contract
import torch
from PIL import Image
from safetensors.torch import save_file

from anyorder.cli.main import main
from anyorder.demo.run import decode_batched
from anyorder.editing import inpaint
from anyorder.hub import build_model, from_pretrained, save_pretrained
from anyorder.io.images import save_image_grid
from anyorder.models import (
    Capabilities,
    FamilySpec,
    KeyMap,
    OfficialFormat,
    Preset,
    families_with,
    family_names,
    get_family,
    register_family,
    setting,
    unregister_family,
)
from anyorder.models.randar import RandAR, RandARConfig, RandARSampling
from anyorder.nn.schedules import parallel_decoding_schedule
from anyorder.sampling import generate, generation_job, model_sampling
from anyorder.sampling.batch import chunk_generator
from anyorder.tokenizers.demo_vq import DemoVQ, DemoVQConfig
from anyorder.training.config import load_run_config
from anyorder.training.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = "toy"


# ---- the family: models/toy/model.py --------------------------------------------------------------------------
@dataclass
class ToyConfig(RandARConfig):
    """RandAR's hyper-parameters, as a family of its own."""


class Toy(RandAR):
    """RandAR under another name: everything a family implements (logits, start_decoding / decode_one_step /
    step_inputs, decays, sampling_orders) is inherited."""

    family = NAME
    config_class = ToyConfig


# ---- models/toy/spec.py ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToySampling(RandARSampling):
    """RandAR's policy and one setting of its own: how many tokens the first step decodes."""

    family = NAME
    burst: int = setting(0, "tokens decoded together in the first step (0: as the steps plan says)", low=0,
                         high="seq_len", step=1)
    reverse_plan: bool = setting(False, "run the step plan backwards: the largest steps first")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.burst < 0:
            raise ValueError(f"burst must be >= 0 (0: off), got {self.burst}")

    def plan_for(self, steps: int, total: int) -> list[int]:
        if not self.burst:
            plan = super().plan_for(steps, total)
        else:
            first = min(self.burst, total)
            rest = total - first
            plan = [first] + (parallel_decoding_schedule(max(1, min(steps - 1, rest)), rest) if rest else [])
        return plan[::-1] if self.reverse_plan else plan


class ToyOfficial(OfficialFormat):
    """A made-up release layout: blocks under ``toy.{i}.``, the head under ``toy_head.``."""

    repo = "example/toy"
    keys = KeyMap([("toy.{i}.", "transformer.blocks.{i}."), ("toy_head.", "transformer.final.head.")])
    markers = ("toy_head.weight",)


DEBUG = {"dim": 32, "depth": 2, "n_head": 2, "seq_len": 16, "codebook_size": 24, "num_classes": 5,
         "multiple_of": 16}
RUN_CONFIG = """\
model_preset: toy_demo
model: {depth: 1}
train: {steps: 6, batch_size: 8, lr: 0.003, warmup_steps: 1, log_every: 2, ckpt_every: 0}
sampling: {steps: 5, burst: 4}
out_dir: runs/demo_toy
"""


def toy_spec(run_configs: Path | None = None) -> FamilySpec:
    return FamilySpec(
        name=NAME, display_name="Toy", description="RandAR with a first-step burst (a test's family)",
        model_class=Toy, config_class=ToyConfig, policy_class=ToySampling,
        capabilities=Capabilities(parallel=True, known_tokens=True), official=ToyOfficial(),
        default_tokenizer="demo-vq",
        presets={"toy_demo": Preset(NAME, DEBUG, {"guidance_scale": 2.0, "steps": 6, "burst": 3}, "demo-vq", 16,
                                    "a tiny Toy")},
        run_configs=run_configs, debug=DEBUG)


@contextlib.contextmanager
def registered(spec: FamilySpec) -> Iterator[FamilySpec]:
    register_family(spec)
    try:
        yield spec
    finally:
        unregister_family(spec.name)


@pytest.fixture
def toy(tmp_path_factory) -> Iterator[FamilySpec]:
    """The family, registered for one test (with its run configs folder)."""
    configs = tmp_path_factory.mktemp("toy_configs")
    (configs / "demo_toy.yaml").write_text(RUN_CONFIG)
    with registered(toy_spec(configs)) as spec:
        yield spec


def _tokenizer(codebook: int, directory: Path) -> Path:
    torch.manual_seed(1)
    tok = DemoVQ(DemoVQConfig(codebook_size=codebook, image_size=16, code_dim=8, hidden=16))
    return save_pretrained(tok, directory)


def _codes(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4, (n, 4, 4), generator=g), torch.randint(0, DEBUG["num_classes"], (n,), generator=g)


def _cli(argv: list, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _help(command: str | None, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"] if command else ["--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse's line breaks undone


# ---- the walk-through --------------------------------------------------------------------------------------------
def test_build_train_save_load_generate_and_edit(toy, tmp_path: Path) -> None:
    assert NAME in family_names() and NAME in families_with("known_tokens") and NAME not in families_with("canvas")
    assert build_model("toy_demo").sampling_defaults == toy.presets["toy_demo"].sampling
    cfg = load_run_config("demo_toy", ["train.steps=4"])  # the family's packaged run config
    assert cfg.family == NAME and cfg.sampling_config() == ToySampling(steps=5, burst=4, guidance_scale=2.0)

    torch.manual_seed(0)
    model = build_model(cfg.model_dict())
    assert type(model) is Toy and model.config == ToyConfig(**{**DEBUG, "depth": 1})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    codes, labels = _codes()
    summary = train(model, codes, labels, cfg.train, tmp_path / "run", progress=False)
    assert summary["steps"] == 4 and np.isfinite(summary["final_loss"])
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in before.items())

    save_pretrained(model.eval(), tmp_path / "run" / "model", extra={"sampling": cfg.sampling_config().to_dict()})
    loaded = from_pretrained(tmp_path / "run" / "model")
    assert type(loaded) is Toy and loaded.config == model.config
    assert model_sampling(loaded) == cfg.sampling_config()
    with torch.no_grad():
        assert torch.equal(loaded.logits(codes[:3].flatten(1), labels[:3]), model.logits(codes[:3].flatten(1),
                                                                                       labels[:3]))

    # the extra setting reaches the decode loop: the first step decodes `burst` tokens, the rest `steps - 1` steps
    done: list[int] = []
    out = generate(loaded, [0, 1], model_sampling(loaded), seed=0, step_callback=lambda d, _: done.append(d))
    assert out.shape == (2, 4, 4) and done[0] == 4 and len(done) == 5 and done[-1] == 16
    done.clear()
    generate(loaded, [0, 1], model_sampling(loaded, burst=0, steps=16), seed=0,
             step_callback=lambda d, _: done.append(d))
    assert done == list(range(1, 17))
    assert generation_job(loaded, [0], burst=16).plan == [16]

    # known-token editing: the capability the spec declares
    grid = codes[:2]
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:, 2:] = True
    edited = inpaint(loaded, grid, mask, [0, 1], seed=0)
    assert torch.equal(edited[:, ~mask], grid[:, ~mask])


def test_anyorder_train_and_sample_take_the_family_and_its_setting(toy, tmp_path: Path, capsys) -> None:
    codes, labels = _codes()
    save_file({"codes": codes.to(torch.int64), "labels": labels}, str(tmp_path / "codes.safetensors"))
    run = tmp_path / "run"
    code, _, err = _cli(["train", "--model", NAME, "--config", "demo_toy", "--out", run, "--quiet",
                         f"data.source={tmp_path / 'codes.safetensors'}", "train.steps=2"], capsys)
    assert code == 0, err
    _tokenizer(DEBUG["codebook_size"], run / "tokenizer")
    model = from_pretrained(run / "model")
    assert type(model) is Toy and model_sampling(model).burst == 4  # the run config's sampling settings

    assert "--burst BURST tokens decoded together in the first step (0: as the steps plan says) [Toy]" in _help(
        "sample", capsys)
    assert "demo_toy" in _help("train", capsys)  # the family's packaged run configs
    top = _help(None, capsys)  # the commands its capabilities open, and the families the package names
    editing = ", ".join(get_family(f).display_name for f in families_with("known_tokens"))
    every = ", ".join(get_family(f).display_name for f in family_names())
    assert "Toy" in editing and f"regenerate a masked region of an image ({editing})" in top and f"({every})" in top
    png = tmp_path / "toy.png"
    code, _, err = _cli(["sample", "--model", run, "--classes", "0", "1", "--burst", "5", "--steps", "4",
                         "--seed", "3", "--out", png], capsys)
    assert code == 0, err
    record = json.loads(png.with_suffix(".json").read_text())
    assert record["sampling"]["burst"] == 5 and record["sampling"]["steps"] == 4
    # the grid is the library's sample with those settings (batch 0's stream), decoded by the run's tokenizer
    kw = model_sampling(model, burst=5, steps=4).to_dict()
    expect = generate(model, [0, 1], generator=chunk_generator(3, 0, "cpu"), **kw)
    tok = from_pretrained(run / "tokenizer")
    save_image_grid(decode_batched(tok, expect), tmp_path / "expect.png", nrow=2)
    with Image.open(png) as a, Image.open(tmp_path / "expect.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))

    # another family's model: the option exists (the Toy family has it) but is an error naming its family
    other = next(f for f in family_names() if "burst" not in get_family(f).policy_class.field_names())
    torch.manual_seed(0)
    save_pretrained(build_model({"family": other, **get_family(other).debug}), tmp_path / "other" / "model")
    _tokenizer(get_family(other).debug["codebook_size"], tmp_path / "other" / "tokenizer")
    code, _, err = _cli(["sample", "--model", tmp_path / "other", "--burst", "2", "--out", tmp_path / "o.png"],
                        capsys)
    assert code == 2 and f"'burst' does not apply to a {other} model: it is a {NAME} setting" in err


def test_a_boolean_setting_is_a_flag_pair_on_the_command_line_and_a_checkbox_in_the_app(toy, tmp_path: Path,
                                                                                          capsys) -> None:
    """A ``bool`` policy field: ``--x`` / ``--no-x`` (unset: the model's own value), recorded as a bool, and the
    sample is the library's with that value; in the app a checkbox whose value reaches the policy as a bool."""
    assert "--reverse-plan, --no-reverse-plan run the step plan backwards: the largest steps first [Toy]" in _help(
        "sample", capsys)
    torch.manual_seed(0)
    model = build_model({"family": NAME, **DEBUG})
    save_pretrained(model, tmp_path / "run" / "model")
    _tokenizer(DEBUG["codebook_size"], tmp_path / "run" / "tokenizer")
    assert ToySampling(steps=4, reverse_plan=True).plan_for(4, 16) == ToySampling(steps=4).plan_for(4, 16)[::-1]
    for flag, value in (("--reverse-plan", True), ("--no-reverse-plan", False), (None, False)):
        png = tmp_path / f"{flag}.png"
        code, _, err = _cli(["sample", "--model", tmp_path / "run", "--classes", "0", "1", "--steps", "4",
                             "--seed", "3", "--out", png, *([flag] if flag else [])], capsys)
        assert code == 0, err
        recorded = json.loads(png.with_suffix(".json").read_text())["sampling"]["reverse_plan"]
        assert recorded is value
        kw = model_sampling(model, steps=4, reverse_plan=value).to_dict()
        expect = generate(model, [0, 1], generator=chunk_generator(3, 0, "cpu"), **kw)
        tok = from_pretrained(tmp_path / "run" / "tokenizer")
        save_image_grid(decode_batched(tok, expect), tmp_path / "expect.png", nrow=2)
        with Image.open(png) as got, Image.open(tmp_path / "expect.png") as want:
            assert np.array_equal(np.asarray(got), np.asarray(want)), flag

    pytest.importorskip("gradio", reason="gradio is not installed (pip install gradio)")
    from anyorder.app import core, ui

    entry = types.SimpleNamespace(spec=toy, model=model, defaults=lambda: {"steps": 4})
    info = next(i for i in toy.policy_class.settings() if i.name == "reverse_plan")
    box = ui._control(info, entry)
    assert type(box).__name__ == "Checkbox" and box.value is False and box.visible
    for value in (True, False):
        chosen = core.sampling_settings(entry, reverse_plan=value)
        assert chosen["reverse_plan"] is value and ToySampling.from_dict(chosen).reverse_plan is value


def _contract_checks() -> list[str]:
    """The contract tests that take a family (test_family_contract.py), by name."""
    return [name for name, fn in vars(contract).items()
            if name.startswith("test_") and callable(fn) and "family" in inspect.signature(fn).parameters]


@pytest.mark.parametrize("check", _contract_checks())
def test_the_contract_holds_for_the_added_family(toy, check: str, tmp_path: Path, monkeypatch) -> None:
    fn = getattr(contract, check)
    given = {"family": NAME, "tmp_path": tmp_path, "monkeypatch": monkeypatch, "one_thread": None}
    fn(**{name: given[name] for name in inspect.signature(fn).parameters})


def test_the_registry_wide_contract_includes_the_added_family(toy) -> None:
    contract.test_every_registered_family_has_what_the_package_asks_of_it()


def test_unregistered_the_family_leaves_the_registry_and_the_command_line(capsys) -> None:
    with registered(toy_spec()):
        inside = _help("sample", capsys)
    after = _help("sample", capsys)
    assert "--burst" in inside and "--burst" not in after
    assert NAME not in family_names()
    with pytest.raises(ValueError, match=f"unknown model family '{NAME}'; registered families"):
        build_model({"family": NAME, **DEBUG})
    with pytest.raises(ValueError, match="unknown preset 'toy_demo'"):
        build_model("toy_demo")
