"""The contract every registered model family keeps, tested once over the registry (diffusers' shared
scheduler tests, for model families): a family added to the registry is tested here without a new line.

- KV-cached logits equal the full-sequence (teacher-forced) logits, one token per step, in any order;
- the static (compilable) step gives the eager step's logits, under a parallel plan where the family decodes
  in parallel;
- a seed reproduces a sample, and guided greedy sampling is the argmax of ``u + (c - u) s`` at the policy's
  scale for every token;
- save / load and the official format round-trip the weights (and the official names are the official
  checkpoint's, where a fixture of the family exists); loading builds the model on the meta device and assigns
  the checkpoint's tensors (no random initialisation), recomputing non-persistent buffers;
- a sampling setting of another family is an error that names it; the weight-decay rule is the family's own;
- a few training steps run and lower the loss.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES

from anyorder.hub import _weights_in_directory, from_pretrained, load_official, save_pretrained
from anyorder.io import load_state_dict
from anyorder.models import FAMILIES, build_model, family_names, get_family
from anyorder.nn.orders import permute, random_orders
from anyorder.sampling import decode, generate, generation_job, sampling_config
from anyorder.training.config import TrainConfig
from anyorder.training.loop import train
from anyorder.training.optim import make_optimizer

FAMILY = family_names()
PARALLEL = [f for f in FAMILY if get_family(f).can("parallel")]


def tiny(family: str, seed: int = 0):
    """The family's debug model with noise on every weight (official inits zero some layers)."""
    torch.manual_seed(seed)
    model = build_model({"family": family, **get_family(family).debug})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def data(model, batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, model.codebook_size, (batch, model.seq_len), generator=g)
    classes = torch.randint(0, model.num_classes, (batch,), generator=g)
    return codes, classes, random_orders(batch, model.seq_len, generator=g)


def _cached(model, classes, orders, gen, plan, static=False) -> list[torch.Tensor]:
    """Each step's logits ``[B, n, V]`` when the true tokens ``gen`` (generation order) are fed by ``plan``."""
    state = model.start_decoding(classes, orders, static=static)
    out, new, done = [], None, 0
    for n in plan:
        out.append(model.decode_one_step(state, new, n))
        new, done = gen[:, done : done + n], done + n
        state.done = done
    model.end_decoding()
    return out


@torch.no_grad()
@pytest.mark.parametrize("family", FAMILY)
def test_kv_cached_logits_equal_full_sequence_logits_one_token_per_step(family):
    model = tiny(family)
    codes, classes, orders = data(model)
    full = model.logits(codes, classes, orders)
    steps = _cached(model, classes, orders, permute(codes, orders), [1] * model.seq_len)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("family", FAMILY)
def test_the_static_step_gives_the_eager_steps_logits(family):
    """The fixed-shape step (cache windows, bucketed rows, precomputed masks) computes what the eager one does,
    one token per step and, for a parallel family, under a plan of several tokens per step."""
    model = tiny(family)
    codes, classes, orders = data(model)
    gen = permute(codes, orders)
    T = model.seq_len
    plans = [[1] * T] + ([[1, 2, 3, T - 6]] if get_family(family).can("parallel") else [])
    for plan in plans:
        eager = _cached(model, classes, orders, gen, plan)
        static = _cached(model, classes, orders, gen, plan, static=True)
        for a, b in zip(eager, static):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("family", FAMILY)
def test_a_seed_reproduces_a_sample_and_another_seed_does_not(family):
    model = tiny(family)
    kw = {"guidance_scale": 2.0, "top_p": 0.9, "temperature": 1.5}
    a, b = generate(model, [0, 1, 2, 3], seed=7, **kw), generate(model, [0, 1, 2, 3], seed=7, **kw)
    c = generate(model, [0, 1, 2, 3], seed=8, **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (4, *model.grid) and 0 <= int(a.min()) and int(a.max()) < model.codebook_size


@torch.no_grad()
@pytest.mark.parametrize("family", FAMILY)
def test_guided_greedy_sampling_is_the_argmax_of_the_mix_at_the_policys_scale(family):
    """One token per step, greedy: every token is the argmax of ``u + (c - u) s_j`` with ``c`` / ``u`` the
    teacher-forced conditional / null-class logits and ``s_j`` the policy's scale for the j-th token."""
    model = tiny(family)
    _, classes, orders = data(model, batch=8)
    T = model.seq_len
    policy = sampling_config(family, {"guidance_scale": 6.0, "top_k": 1})
    if "steps" in policy.field_names():
        policy = policy.replace(steps=T)
    codes, used = generate(model, classes, policy, orders=orders, return_orders=True)
    flat = codes.flatten(1)
    c = model.logits(flat, classes, used)
    u = model.logits(flat, torch.full_like(classes, model.null_class), used)
    s = torch.tensor([policy.guidance().scales(j, 1, T)[0] for j in range(T)]).view(1, T, 1)
    assert torch.equal((u + (c - u) * s).argmax(-1), permute(flat, used))


@pytest.mark.parametrize("family", FAMILY)
def test_save_and_load_round_trip(family, tmp_path: Path):
    model = tiny(family)
    model.sampling_defaults = sampling_config(family, {"guidance_scale": 2.5}).to_dict()
    loaded = from_pretrained(save_pretrained(model, tmp_path / "m"))
    assert type(loaded) is type(model) and loaded.config == model.config
    assert loaded.sampling_defaults == model.sampling_defaults
    again = load_official(_weights_in_directory(tmp_path / "m"))  # the weights file; config.json beside it
    assert again.sampling_defaults == model.sampling_defaults
    codes, classes, orders = data(model)
    with torch.no_grad():
        assert torch.equal(loaded.logits(codes, classes, orders), model.logits(codes, classes, orders))


@pytest.mark.parametrize("family", FAMILY)
def test_loading_builds_on_the_meta_device_and_assigns_the_weights(family, tmp_path: Path, monkeypatch):
    """No random initialisation of real tensors when loading: the model is constructed on the meta device and
    takes the checkpoint's tensors; non-persistent buffers (RandAR's RoPE table) are recomputed on the CPU."""
    model = tiny(family)
    save_pretrained(model, tmp_path)
    cls = get_family(family).model_class
    built_on: list[str] = []
    init = cls.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built_on.append(next(self.parameters()).device.type)

    monkeypatch.setattr(cls, "__init__", spy)
    loaded = from_pretrained(tmp_path)
    assert built_on == ["meta"]
    sd = loaded.state_dict()
    assert all(v.device.type == "cpu" for v in sd.values())
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())
    theirs = dict(loaded.named_buffers())
    for name, buf in model.named_buffers():
        assert buf.device == theirs[name].device and torch.equal(buf, theirs[name]), name


@pytest.mark.parametrize("family", [f for f in FAMILY if get_family(f).official is not None])
def test_the_official_format_round_trips(family, tmp_path: Path):
    """Our weights under the official names load back (the family's key map, both directions), and where a
    fixture in the official format exists, the official names are exactly its checkpoint's keys."""
    model = tiny(family)
    official = get_family(family).official
    sd = {official.keys.to_official(k): v for k, v in model.state_dict().items()}
    assert official.is_state_dict(sd)
    torch.save(sd, tmp_path / "official.pth")
    loaded = load_official(tmp_path / "official.pth", config=model.config_dict())
    codes, classes, orders = data(model)
    with torch.no_grad():
        assert torch.equal(loaded.logits(codes, classes, orders), model.logits(codes, classes, orders))
    fixture = FIXTURES / family
    if fixture.is_dir():
        release = load_state_dict(_weights_in_directory(fixture))
        theirs = set(release) - set(official.ignored)
        assert {official.keys.to_official(k) for k in from_pretrained(fixture).state_dict()} == theirs


@pytest.mark.parametrize("family", FAMILY)
def test_a_sampling_setting_of_another_family_is_an_error_naming_it(family):
    own = set(get_family(family).policy_class.field_names())
    foreign = {k for other in FAMILY for k in get_family(other).policy_class.field_names() if k not in own}
    for key in sorted(foreign):
        with pytest.raises(ValueError, match=f"'{key}' does not apply to a {family} model: it is a .* setting"):
            sampling_config(family, {key: 1})
    with pytest.raises(ValueError, match=f"'guidance_stepz' does not apply to a {family} model"):
        generate(tiny(family), [0], guidance_stepz=2)


@pytest.mark.parametrize("family", FAMILY)
def test_the_weight_decay_rule_is_the_familys_own(family):
    """Every trainable parameter falls in one of the two groups by the model's own rule (no default rule)."""
    model = tiny(family)
    decay, no_decay = make_optimizer(model, TrainConfig()).param_groups
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(decay["names"]) | set(no_decay["names"]) == names
    assert set(decay["names"]) == {n for n, p in model.named_parameters() if model.decays(n, p)}
    assert decay["names"] and no_decay["names"]  # matrices decay; biases / norms / tables somewhere do not


@pytest.mark.parametrize("family", FAMILY)
def test_a_few_training_steps_lower_the_loss(family, tmp_path: Path, one_thread):
    """Each class has one fixed code grid: a model that learns anything predicts it from the class, far below
    the ``log V`` of a uniform guess."""
    model = build_model({"family": family, **get_family(family).debug, "class_dropout": 0.0})
    g = torch.Generator().manual_seed(0)
    patterns = torch.randint(0, model.codebook_size, (model.num_classes, *model.grid), generator=g)
    labels = torch.arange(32) % model.num_classes
    cfg = TrainConfig(steps=60, batch_size=16, lr=5e-3, warmup_steps=5, log_every=5, ckpt_every=0)
    history = train(model, patterns[labels], labels, cfg, tmp_path, progress=False)["history"]
    assert history[-1]["loss"] < 0.5 * math.log(model.codebook_size) and history[-1]["loss"] < history[0]["loss"]


def test_every_registered_family_has_what_the_package_asks_of_it():
    """The spec names its own model, config and policy; presets build; a parallel family's policy plans several
    tokens per step."""
    for name, spec in FAMILIES.items():
        assert spec.model_class.family == name and spec.policy_class.family == name
        assert spec.debug, f"{name}: no debug config"
        job = generation_job(tiny(name), [0, 1], seed=0)
        assert sum(job.plan) == job.model.seq_len
        with torch.no_grad():
            assert decode(job).shape == (2, job.model.seq_len)
    for name in PARALLEL:
        assert len(sampling_config(name, {"steps": 4}).plan(16)) == 4
