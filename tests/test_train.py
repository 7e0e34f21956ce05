"""The shared training loop: permuted objective, annealing defaults, optimizer groups, accumulation, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import GENERATOR_FIXTURES, fixture_dir

from anyorder.hub import build_model, from_pretrained
from anyorder.io import CheckpointError
from anyorder.models import family_names, get_family
from anyorder.training.config import TrainConfig
from anyorder.training.loop import LAST_CKPT, anneal_bounds, permutation_ratio, train
from anyorder.training.optim import decay_names, make_optimizer

FAMILY = family_names()


def tiny(family: str, **changes) -> dict:
    """The family's debug config on the data of :func:`_data` (16 codes, 3 classes, a 4x4 grid), one block."""
    return {"family": family, **get_family(family).debug, "seq_len": 16, "codebook_size": 16, "num_classes": 3,
            "depth": 1, **changes}


def _default_schedule(**kw) -> TrainConfig:
    """:func:`_cfg` with the family's own order schedule (RAR anneals into raster, RandAR stays random)."""
    return _cfg(anneal_start=None, anneal_end=None, **kw)



class _Linear(torch.nn.Linear):
    """A one-layer "model" with a weight-decay rule (matrices decay), for the optimizer's own tests."""

    def decays(self, name: str, param: torch.Tensor) -> bool:
        return param.dim() >= 2

def _data(n=40):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (n,), generator=g)
    codes = (labels[:, None, None] * 5 + torch.randint(0, 2, (n, 4, 4), generator=g)) % 16
    return codes, labels


def _cfg(**kw):
    base = dict(steps=6, batch_size=8, lr=3e-3, warmup_steps=2, ckpt_every=2, anneal_start=2, anneal_end=4,
                log_every=1)
    return TrainConfig(**{**base, **kw})


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family", FAMILY)
def test_the_log_follows_the_order_schedule_and_counts_epochs_in_images(family, tmp_path):
    """(That training lowers the loss is a contract test.) Logged ``r``: 1 at the start; at the end 0 for a family
    that anneals into a scan order by default (``order_schedule``), still 1 for one that stays random."""
    torch.manual_seed(0)
    model = build_model(tiny(family))
    codes, labels = _data()
    summary = train(model, codes, labels, _default_schedule(steps=12, ckpt_every=0, log_every=4), tmp_path,
                    progress=False)
    rs = [h["r"] for h in summary["history"]]
    assert rs[0] == 1.0 and rs[-1] == (1.0 if get_family(family).order_schedule is None else 0.0)
    assert summary["epochs"] == pytest.approx(12 * 8 / 40)  # epochs count images


def test_rar_anneals_as_the_paper_unless_told_otherwise():
    """r = 1 until 50% of the steps, linear to 0 at 75% (RAR); RandAR: random orders throughout."""
    cfg = TrainConfig(steps=1000)
    assert anneal_bounds(cfg, "rar") == (500, 750)
    assert [permutation_ratio(s, cfg, "rar") for s in (0, 499, 500, 625, 750, 999)] == [1, 1, 1, 0.5, 0, 0]
    assert {permutation_ratio(s, cfg, "randar") for s in (0, 500, 999)} == {1.0}
    assert anneal_bounds(TrainConfig(steps=1000, anneal_start=100, anneal_end=300), "rar") == (100, 300)
    with pytest.raises(ValueError, match="anneal_end"):
        anneal_bounds(TrainConfig(anneal_start=5), "rar")


@pytest.mark.parametrize("family", FAMILY)
def test_a_crash_mid_training_resumes_bit_identically(family, tmp_path):
    codes, labels = _data()
    torch.manual_seed(0)
    straight = build_model(tiny(family))
    train(straight, codes, labels, _default_schedule(), tmp_path / "a", progress=False)

    torch.manual_seed(0)
    crashed = build_model(tiny(family))

    def crash(step, _stats):
        if step == 5:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        train(crashed, codes, labels, _default_schedule(), tmp_path / "b", progress=False, step_callback=crash)
    ckpt = tmp_path / "b" / "checkpoints" / LAST_CKPT
    assert torch.load(ckpt, weights_only=True)["step"] == 4
    torch.manual_seed(123)  # a fresh process: different global RNG, fresh weights
    resumed = build_model(tiny(family))
    summary = train(resumed, codes, labels, _default_schedule(), tmp_path / "b", progress=False)
    assert summary["steps"] == 6
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("family", FAMILY)
def test_accumulating_two_micro_batches_equals_one_batch_of_twice_the_size(family, tmp_path):
    codes, labels = _data()
    runs = {}
    for accum in (1, 2):
        torch.manual_seed(0)
        model = build_model(tiny(family, class_dropout=0.5))  # label dropout drawn for the global batch
        train(model, codes, labels, _default_schedule(steps=3, grad_accum=accum), tmp_path / str(accum),
              progress=False)
        runs[accum] = model.state_dict()
    for k in runs[1]:
        a, b = runs[1][k], runs[2][k]
        if k.endswith("attn.qkv.bias"):
            # the key bias adds q.b to every score of a query: softmax ignores it, so its gradient is 0 up to
            # rounding, which AdamW scales to full lr-sized steps; compare the query and value biases only
            third = a.shape[0] // 3
            a, b = torch.cat([a[:third], a[2 * third:]]), torch.cat([b[:third], b[2 * third:]])
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=k)


def test_resuming_a_finished_run_reports_its_last_loss(tmp_path):
    codes, labels = _data()
    torch.manual_seed(0)
    done = train(build_model(tiny("rar")), codes, labels, _cfg(), tmp_path, progress=False)
    again = train(build_model(tiny("rar")), codes, labels, _cfg(), tmp_path, progress=False)
    assert again["steps"] == 6 and again["final_loss"] == done["final_loss"] == done["history"][-1]["loss"]


def test_resume_with_another_model_config_is_refused_naming_the_keys(tmp_path):
    codes, labels = _data()
    train(build_model(tiny("rar")), codes, labels, _cfg(steps=2), tmp_path, progress=False)
    other = build_model(tiny("rar", dim=48, class_dropout=0.2))
    with pytest.raises(CheckpointError, match=r"2 key\(s\): class_dropout \(checkpoint 0.1, now 0.2\); dim "
                                              r"\(checkpoint 32, now 48\)"):
        train(other, codes, labels, _cfg(steps=4), tmp_path, progress=False)
    # activation checkpointing changes how a step runs, not what is trained: free to differ
    same = build_model(tiny("rar", grad_checkpointing=True))
    assert train(same, codes, labels, _cfg(steps=3), tmp_path, progress=False)["steps"] == 3


@pytest.mark.parametrize("family", FAMILY)
def test_activation_checkpointing_gives_the_same_step(family, tmp_path):
    codes, labels = _data()
    out = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = build_model(tiny(family, depth=2, grad_checkpointing=ckpt, dropout=0.1))
        train(model, codes, labels, _default_schedule(steps=2, ckpt_every=0), tmp_path / str(ckpt),
              progress=False)
        out.append(model.state_dict())
    for k in out[0]:
        torch.testing.assert_close(out[0][k], out[1][k], atol=1e-6, rtol=0, msg=k)


@pytest.mark.parametrize("family", GENERATOR_FIXTURES)
def test_weight_decay_groups_match_the_official_trainer(family):
    """decay_groups.json lists, in official names, what the official trainer decays; ours must be the same set."""
    folder = fixture_dir(family)
    if not (folder / "decay_groups.json").is_file():
        pytest.skip(f"{folder} has no decay_groups.json (LPD's rule is checked against its add_weight_decay)")
    model = from_pretrained(folder)
    groups = json.loads((folder / "decay_groups.json").read_text())
    convert = get_family(family).official.convert_state_dict

    def ours(names):
        return set(convert({n: torch.zeros(1) for n in names}))

    opt = make_optimizer(model, TrainConfig(weight_decay=0.03))
    decay, no_decay = opt.param_groups
    by_id = {id(p): n for n, p in model.named_parameters()}
    assert {by_id[id(p)] for p in decay["params"]} == ours(groups["decay"]) == decay_names(model)
    assert {by_id[id(p)] for p in no_decay["params"]} == ours(groups["no_decay"])
    assert decay["weight_decay"] == 0.03 and no_decay["weight_decay"] == 0.0
    assert opt.defaults["betas"] == (0.9, 0.96)


def test_the_optimizer_is_fused_where_the_device_has_the_kernel_and_steps_like_the_loop():
    """One fused AdamW kernel (CPU since torch 2.4, CUDA) instead of the per-tensor loop: same update."""
    torch.manual_seed(0)
    a, b = _Linear(8, 8), _Linear(8, 8)
    b.load_state_dict(a.state_dict())
    fused = make_optimizer(a, TrainConfig(lr=1e-2, weight_decay=0.1))
    assert fused.defaults["fused"] is True
    loop = torch.optim.AdamW([{"params": [b.weight], "weight_decay": 0.1}, {"params": [b.bias], "weight_decay": 0.0}],
                             lr=1e-2, betas=(0.9, 0.96), foreach=False)
    x = torch.randn(4, 8)
    for _ in range(3):
        for m, o in ((a, fused), (b, loop)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    assert torch.allclose(a.weight, b.weight, atol=1e-6) and torch.allclose(a.bias, b.bias, atol=1e-6)
    with torch.device("meta"):  # no fused kernel there: the per-tensor loop
        assert make_optimizer(_Linear(8, 8), TrainConfig()).defaults["fused"] is None


def test_a_checkpoint_of_the_per_tensor_loop_resumes_fused():
    """Loading an optimizer state copies the saved groups' flags; resuming keeps this run's fused update."""
    from anyorder.training.distributed import full_state, load_full_state

    torch.manual_seed(0)
    m, x = _Linear(8, 8), torch.randn(4, 8)
    loop = torch.optim.AdamW([{"params": [m.weight]}, {"params": [m.bias], "weight_decay": 0.0}], foreach=False)
    m(x).square().mean().backward()
    loop.step()
    msd, osd = full_state(m, loop)
    m.zero_grad(set_to_none=True)  # as in a fresh process
    opt = make_optimizer(m, TrainConfig())
    load_full_state(m, opt, msd, osd)
    assert [(g["fused"], g["foreach"]) for g in opt.param_groups] == [(True, None), (True, None)]
    assert all(opt.state[p]["step"].item() == 1 for p in m.parameters())  # the state itself was loaded
    opt.step()


def test_bad_training_inputs_are_named(tmp_path):
    model = build_model(tiny("rar"))
    codes, labels = _data()
    with pytest.raises(ValueError, match="label 7 but the model has 3 classes"):
        train(model, codes, torch.full_like(labels, 7), _cfg(), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"code id 1\d\d but the model predicts 16 codes"):
        train(model, codes + 100, labels, _cfg(), tmp_path, progress=False)
    with pytest.raises(ValueError, match="tokens per image"):
        train(model, codes[:, :2], labels, _cfg(), tmp_path, progress=False)
    with pytest.raises(ValueError, match="does not split into 1 process"):
        train(model, codes, labels, _cfg(batch_size=9, grad_accum=2), tmp_path, progress=False)


def test_a_randar_order_must_agree_with_the_annealing(tmp_path):
    """model.order records the order training ends in (and decoding starts from)."""
    codes, labels = _data()
    scan = build_model(tiny("randar", order="raster"))
    with pytest.raises(ValueError, match="model.order='raster'.*anneal_end=-1 keeps every order random"):
        train(scan, codes, labels, _cfg(anneal_end=-1), tmp_path / "a", progress=False)
    random_order = build_model(tiny("randar", order="random"))
    with pytest.warns(UserWarning, match="anneals this randar model into raster order.*set model.order=raster"):
        train(random_order, codes, labels, _cfg(steps=1), tmp_path / "b", progress=False)


def test_resuming_reports_no_stale_loss(tmp_path):
    """A checkpoint between two logged steps (saved at 3, last logged at 2) resumed with nothing left to
    train reports a NaN final loss, not step 2's loss."""
    codes, labels = _data()

    def crash(step, _stats):
        if step == 4:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        train(build_model(tiny("rar")), codes, labels, _cfg(ckpt_every=3, log_every=2), tmp_path, progress=False,
              step_callback=crash)
    again = train(build_model(tiny("rar")), codes, labels, _cfg(steps=3, ckpt_every=3, log_every=2), tmp_path,
                  progress=False)
    assert again["steps"] == 3 and again["history"][-1]["step"] == 2
    assert math.isnan(again["final_loss"])
