"""The CUDA review's findings (issue 23), each as a test that runs on the CPU and, where CUDA exists, on the GPU.

A GPU run (``benchmarks/device_check.sh``) runs this file's ``cuda`` cases; on a CPU the same mechanisms are
checked with the means a CPU has: a torch-function mode that refuses the ops known to sync with the host (on
CUDA, ``torch.cuda.set_sync_debug_mode("error")`` as well), a generator that reports another device, spies.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator

import pytest
import torch
from conftest import decode_job, fixture_dir, fixture_geometry
from torch.overrides import TorchFunctionMode

from anyorder.hub import load_official
from anyorder.nn.schedules import GuidanceSchedule
from anyorder.sampling import generate, sampling_config
from anyorder.sampling.decode import decode

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# ops that wait for the device: a read of a value into Python, a shape that depends on values, or a draw
# whose input checks read the device (torch.multinomial)
SYNCING = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "argwhere", "multinomial",
           "masked_select", "unique", "unique_consecutive", "cpu", "numpy", "repeat_interleave_with_counts"}


class NoHostSync(TorchFunctionMode):
    """Refuse every op of :data:`SYNCING`, and blocking copies between the host and a device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in SYNCING:
            raise AssertionError(f"{name} syncs with the host inside the decode loop")
        if name == "to" and args and isinstance(args[0], torch.Tensor) and not kwargs.get("non_blocking", False):
            target = next((a for a in (*args[1:], kwargs.get("device")) if isinstance(a, (str, torch.device))), None)
            if target is not None and torch.device(target).type != args[0].device.type:
                raise AssertionError(f"a blocking copy {args[0].device} -> {target} inside the decode loop")
        if name == "tensor" and torch.device(kwargs.get("device") or "cpu").type != "cpu":
            raise AssertionError("torch.tensor(..., device=<accelerator>) is a blocking copy inside the decode loop")
        return func(*args, **kwargs)


@contextlib.contextmanager
def no_sync_after_first_step(device: str) -> Iterator:
    """A ``step_callback`` that turns the guard on after the first step (set-up, orders and checks before the
    loop may sync); the guard covers every later step of the loop and is off again on exit."""
    stack = contextlib.ExitStack()

    def callback(done: int, _tokens: torch.Tensor) -> None:
        if not stack._exit_callbacks:  # first step done: every later step runs guarded
            stack.enter_context(NoHostSync())
            if device == "cuda":
                old = torch.cuda.get_sync_debug_mode()
                torch.cuda.set_sync_debug_mode("error")
                stack.callback(torch.cuda.set_sync_debug_mode, old)

    try:
        yield callback
    finally:
        stack.close()


def _model(family: str, device: str, dtype: str | None = None):
    d = fixture_dir(family)
    return load_official(d / ("checkpoint.bin" if family == "rar" else "checkpoint.safetensors"),
                         d / "config.json", device=device, dtype=dtype).eval()


def _policy(family: str, **extra) -> dict:
    steps = {"steps": max(2, fixture_geometry("randar")["seq_len"] // 3)} if family == "randar" else {}
    return {"guidance_scale": 3.0, "top_k": 8, "top_p": 0.9, **steps, **extra}


def _guidance(policy, monkeypatch, per_token: bool) -> None:
    """``per_token``: a scale per token of a parallel step (LPD's kind of schedule) for the policy."""
    if per_token:
        schedule = GuidanceSchedule("linear", 3.0, start=1.0, per_token=True)
        monkeypatch.setattr(type(policy), "guidance", lambda self: schedule)


# ---- sampling: no host sync per step, on every path --------------------------------------------------------
PARALLEL = [("rar", False), ("randar", False), ("randar", True)]
PARALLEL_IDS = ["rar", "randar", "randar-per-token-guidance"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family,per_token", PARALLEL, ids=PARALLEL_IDS)
@pytest.mark.parametrize("path", ["eager", "static"])
def test_the_decode_loop_never_syncs_with_the_host(family, per_token, path, device, one_thread, monkeypatch):
    """Eager (``generate``, ``anyorder sample``, editing, the app) and static steps: temperature sampling
    with top-k / top-p and guidance (per step, or per token of a parallel step); a CPU generator feeding the
    model as well as one on its device."""
    model = _model(family, device)
    policy = sampling_config(family, _policy(family))
    _guidance(policy, monkeypatch, per_token)
    for gen_device in {"cpu", device}:
        g = torch.Generator(device=gen_device).manual_seed(0)
        orders = model.sampling_orders(2, g)
        job = decode_job(model, torch.tensor([0, 1], device=device), orders, policy, g)
        with no_sync_after_first_step(device) as callback:
            out = decode(job, callback, static=path == "static")
        assert out.device.type == device


@pytest.mark.parametrize("device", DEVICES)
def test_the_editing_tasks_never_sync_in_their_decode_loops(device, monkeypatch, one_thread):
    """Inpainting (known tokens teacher-forced first), outpainting on a larger canvas, and extrapolation with
    spatial guidance (three rows per image, context embeddings) through the library calls, every decode loop
    guarded from its second step on."""
    import importlib

    from anyorder import editing as E

    guarded = []
    for name in ("anyorder.editing.inpaint", "anyorder.editing.extrapolate", "anyorder.sampling.generate"):
        module = importlib.import_module(name)
        real = module.decode

        def guarded_decode(job, step_callback=None, _real=real, **kw):
            with no_sync_after_first_step(device) as callback:
                guarded.append(len(job.plan))
                return _real(job, callback, **kw)

        monkeypatch.setattr(module, "decode", guarded_decode)
    model = _model("randar", device)
    side = model.grid[0]
    codes = torch.randint(0, model.codebook_size, (2, side, side), generator=torch.Generator().manual_seed(0))
    codes = codes.to(device)
    kw = {"guidance_scale": 2.0, "top_p": 0.9, "steps": 3}
    E.inpaint(model, codes, E.half_mask(side, "left").to(device), [0, 1], seed=0, **kw)
    E.outpaint(model, codes, 0, right=2, seed=1, **kw)
    E.extrapolate(model, [0], factor=2, spatial_guidance_scale=2.0, seed=2, **kw)
    assert len(guarded) >= 4 and min(guarded) > 1  # inpaint, outpaint, extrapolation's two stages


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_draws_what_torch_multinomial_draws_for_a_seed(device):
    """The race without host syncs is the draw ``torch.multinomial`` makes for one sample from the same
    generator state (its one-sample path races the same noise after checks that sync): seeded samples are
    those of the earlier multinomial sampler. ``top_k`` / ``top_p`` filter the probabilities first."""
    from anyorder.sampling import sample_logits

    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0)).to(device) * 2
    for gen_device in {"cpu", device}:
        ours = sample_logits(logits, 1.3, generator=torch.Generator(gen_device).manual_seed(7))
        probs = torch.softmax(logits / 1.3, -1).to(gen_device)
        ref = torch.multinomial(probs, 1, generator=torch.Generator(gen_device).manual_seed(7))
        assert torch.equal(ours.cpu(), ref.view(-1).cpu())
    kept = sample_logits(logits, 1.0, top_k=3, generator=torch.Generator(device).manual_seed(1))
    assert bool((logits.topk(3).indices == kept[:, None]).any(1).all())


def test_the_guard_sees_the_ops_that_sync():
    """The guard of the test above refuses what it must (so its silence means something)."""
    x = torch.rand(4, 8)
    for op in (lambda: torch.multinomial(x, 1), lambda: x[0, 0].item(), lambda: bool(x.sum() > 0),
               lambda: x.nonzero(), lambda: int(x.argmax()), lambda: x.tolist()):
        with pytest.raises(AssertionError, match="syncs with the host"), NoHostSync():
            op()


@torch.no_grad()
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family,per_token", PARALLEL, ids=PARALLEL_IDS)
def test_a_seed_draws_the_same_samples_eager_and_static(family, per_token, device, one_thread, monkeypatch):
    """The eager loop samples by the same exponential race as the static step, from the same noise: a seed
    gives the same ids on both paths (their logits agree to float rounding), per-token guidance included
    (the two paths move their scales to the device separately)."""
    model = _model(family, device)
    policy = sampling_config(family, _policy(family, top_k=0, top_p=1.0, temperature=1.5))  # many candidates
    _guidance(policy, monkeypatch, per_token)
    outs = []
    for static in (False, True):
        g = torch.Generator(device=device).manual_seed(5)
        job = decode_job(model, torch.tensor([0, 1, 2], device=device), model.sampling_orders(3, g), policy, g)
        outs.append(decode(job, static=static))
    assert torch.equal(*outs)


def test_decode_runs_without_autograd_for_direct_callers(one_thread):
    """``decode`` called directly (not through ``generate``) with grad mode on records no graph: the KV cache
    would otherwise keep every step's activations alive."""
    model = _model("randar", "cpu")
    seen = []
    job = decode_job(model, torch.tensor([0]), model.sampling_orders(1), sampling_config("randar", {"steps": 3}))
    decode(job, lambda done, out: seen.append(torch.is_grad_enabled()))
    assert seen and not any(seen)


# ---- a CPU generator with a model on another device ----------------------------------------------------------
class _ElsewhereGenerator(torch.Generator):
    """A CPU generator that reports another device: with a CPU model it stands for a generator on another
    device than the model's (a CPU generator feeding a CUDA model, the other way round)."""

    @property
    def device(self) -> torch.device:  # noqa: D102
        return torch.device("meta")


@pytest.fixture
def strict_draws(monkeypatch):
    """``torch.rand`` that enforces CUDA's rule on a CPU: a generator draws on its own device only."""
    real = torch.rand

    def rand(*size, generator=None, device=None, **kw):
        if generator is not None:
            asked = torch.device(device if device is not None else "cpu")
            if asked.type != generator.device.type:
                raise RuntimeError(f"Expected a '{asked.type}' device type for generator but found "
                                   f"'{generator.device.type}'")
            device = "cpu" if isinstance(generator, _ElsewhereGenerator) else device
        return real(*size, generator=generator, device=device, **kw)

    monkeypatch.setattr(torch, "rand", rand)


@pytest.mark.parametrize("device", DEVICES)
def test_extrapolation_with_spatial_guidance_takes_a_generator_on_another_device(device, strict_draws, one_thread):
    """The spatial-guidance mask is drawn on the generator's device and moved to the model's (it was drawn on
    the model's device with the generator: a crash for a CPU generator with a CUDA model)."""
    from anyorder.editing import extrapolate

    model = _model("randar", device)
    side = model.grid[0]
    low = torch.randint(0, model.codebook_size, (1, side, side), generator=torch.Generator().manual_seed(0))
    # greedy: the draws are the orders and the mask (sampling noise would need a real device of that name)
    gen = _ElsewhereGenerator().manual_seed(0) if device == "cpu" else torch.Generator().manual_seed(0)
    out = extrapolate(model, [0], factor=2, low_res=low.to(device), top_k=1, spatial_guidance_scale=2.0,
                      generator=gen)
    assert out.device.type == device and tuple(out.shape) == (1, 2 * side, 2 * side)


# ---- training at scale: FSDP2 under bf16 --------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_fsdp_trains_under_bf16_autocast_with_fp32_shards(device, one_thread):
    """FSDP2 in one process (gloo on the CPU, NCCL on a GPU) under bf16 autocast: on CUDA the blocks are gathered
    in bf16 and the root in fp32, on the CPU everything in fp32; the shards, their gradients and so the
    optimizer stay fp32, and the loss is finite."""
    import torch.distributed as dist

    from anyorder.models import build_model
    from anyorder.training.distributed import wrap
    from anyorder.training.loop import TrainingLoss

    tiny = {"family": "rar", "dim": 32, "depth": 2, "n_head": 2, "mlp_hidden": 64, "seq_len": 16,
            "codebook_size": 16, "num_classes": 3, "pos_extra": 2, "timestep_extra": 2}
    if device == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = build_model(tiny, device=device)
        seen = {}

        def record(where):
            def hook(mod, args) -> None:
                seen.setdefault(where, mod.weight.dtype)
            return hook

        model.transformer.blocks[0].attn.qkv.register_forward_pre_hook(record("block"))
        model.embeddings.register_forward_pre_hook(record("root"))
        engine = wrap(TrainingLoss(model), list(model.transformer.blocks), fsdp=True, compute_dtype=torch.bfloat16)
        codes = torch.randint(0, 16, (2, 16), device=device)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = engine(codes, torch.tensor([0, 1], device=device), torch.arange(16, device=device).expand(2, -1))
        loss.backward()
        assert seen == {"block": torch.bfloat16 if device == "cuda" else torch.float32, "root": torch.float32}
        assert torch.isfinite(loss)
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("device", DEVICES)
def test_a_model_built_on_its_device_has_the_cpu_rope_table(device):
    """``build_model(device=...)`` builds in place; RandAR's RoPE table is still computed on the CPU (the
    official code's bits) and then moved, so a GPU-built model's table equals a CPU-built one's exactly."""
    from anyorder.models import build_model

    cfg = {"family": "randar", "dim": 64, "depth": 1, "n_head": 4, "seq_len": 64, "codebook_size": 16,
           "num_classes": 3, "multiple_of": 16}
    here, cpu = build_model(cfg, device=device), build_model(cfg)
    assert here.freqs_cis.device.type == device and next(here.parameters()).device.type == device
    assert torch.equal(here.freqs_cis.cpu(), cpu.freqs_cis)


# ---- torch versions ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("names", [("recompile_limit", "accumulated_recompile_limit"),
                                   ("cache_size_limit", "accumulated_cache_size_limit")], ids=["torch>=2.7", "2.6"])
def test_the_compiled_step_raises_dynamos_limits_under_either_name(names, monkeypatch):
    """torch 2.6 (pyproject's floor) names dynamo's limits ``cache_size_limit`` / ``accumulated_cache_size_limit``
    (setting ``recompile_limit`` there is an error); 2.7 renamed them. Either is raised, neither lowered."""
    import importlib
    from types import SimpleNamespace

    import torch._dynamo

    decode_lib = importlib.import_module("anyorder.sampling.decode")

    cfg = SimpleNamespace(**{names[0]: 8, names[1]: 2000})
    monkeypatch.setattr(torch._dynamo, "config", cfg)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    monkeypatch.setattr(decode_lib, "_COMPILED", {})
    decode_lib.compiled_step("eager")
    assert vars(cfg) == {names[0]: 64, names[1]: 2000}


# ---- bf16 -------------------------------------------------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize("device", DEVICES)
def test_merging_rars_position_tables_keeps_a_bf16_model_bf16(device, one_thread):
    """``merge_position_embeddings`` of a bf16 model is a bf16 model on the same device (it silently made an
    fp32 one), with the same greedy generations as the unmerged bf16 model in its scan order."""
    model = _model("rar", device, "bf16")
    model.sampling_defaults = {"guidance_scale": 2.0}
    merged = model.merge_position_embeddings().eval()
    assert {(p.dtype, p.device.type) for p in merged.parameters()} == {(torch.bfloat16, device)}
    assert merged.sampling_defaults == model.sampling_defaults
    classes = torch.tensor([0, 1], device=device)
    assert torch.equal(generate(merged, classes, top_k=1), generate(model, classes, top_k=1))


# ---- memory ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_a_kept_cache_of_another_batch_is_freed_before_the_new_one_is_allocated(device, monkeypatch):
    """The compiled CUDA path keeps its KV cache between generations (CUDA graphs replay on its buffers); a
    generation of another batch (a run's smaller last chunk) must free it before allocating its own: at every
    allocation no cache of the old layout is alive, so the peak is the larger cache, not both."""
    import gc
    import weakref

    from anyorder.nn import kv_cache

    model = _model("randar", device)
    live: weakref.WeakSet = weakref.WeakSet()
    old_rows_at_alloc = []
    real = kv_cache.KVCache.__init__

    def init(self, batch, *args, **kw):
        gc.collect()
        old_rows_at_alloc.append(sum(c.k.shape[0] for c in live if c.k.shape[0] != batch))
        real(self, batch, *args, **kw)
        live.add(self)

    monkeypatch.setattr(kv_cache.KVCache, "__init__", init)
    tr = model.transformer
    tr.setup_cache(8, 33, reuse=True)
    first = [blk.attn.kv_cache for blk in tr.blocks]
    tr.setup_cache(8, 33, reuse=True)  # the same layout: reused, nothing allocated
    assert [blk.attn.kv_cache for blk in tr.blocks] == first and len(old_rows_at_alloc) == len(tr.blocks)
    del first
    tr.setup_cache(3, 33, reuse=True)  # another batch: the batch-8 caches are gone before any new one
    assert old_rows_at_alloc[len(tr.blocks):] == [0] * len(tr.blocks)
    tr.clear_cache()


# ---- attention kernels ---------------------------------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize("device", DEVICES)
def test_eager_parallel_steps_attend_without_a_boolean_mask(device, monkeypatch, one_thread):
    """A multi-row eager step (RandAR's parallel decoding, the prefill) is causal up to its own slots: passed as
    lower-right causal attention instead of a boolean mask, SDPA can run it on Flash (which takes no mask).
    On CUDA the bf16 generation runs with Flash as the only kernel allowed."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from anyorder.nn.kv_cache import KVCache

    masks = []
    real = KVCache.mask
    monkeypatch.setattr(KVCache, "mask", lambda self, step: masks.append(real(self, step)) or masks[-1])
    model = _model("randar", device, "bf16" if device == "cuda" else None)
    kernels = sdpa_kernel(SDPBackend.FLASH_ATTENTION) if device == "cuda" else contextlib.nullcontext()
    with kernels:
        out = generate(model, [0, 1], seed=0, steps=4, guidance_scale=2.0)
    assert out.device.type == device
    assert masks and not any(isinstance(m, torch.Tensor) and m.dtype == torch.bool for m in masks)
    assert any(m is not None for m in masks)  # the multi-row steps did run


# ---- what the commands say --------------------------------------------------------------------------------
def _sample_args(out, *extra: str) -> list[str]:
    return ["sample", "--model", str(fixture_dir("rar")), "--tokenizer",
            str(fixture_dir("maskgit_vqgan") / "vqgan_checkpoint.bin"), "--classes", "0", "--out", str(out), *extra]


def test_a_cuda_device_on_a_machine_without_cuda_is_one_line_naming_the_option(tmp_path, monkeypatch, capsys):
    """Every command that takes a device: one error line naming the option and what is missing (it was a
    25-line traceback from torch's lazy CUDA init)."""
    from anyorder.cli.main import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    image = tmp_path / "in.png"
    for argv, option in [
        (_sample_args(tmp_path / "s.png", "--device", "cuda"), "--device cuda"),
        (["inpaint", "--model", str(fixture_dir("randar")), "--image", str(image), "--side", "left", "--out",
          str(tmp_path / "i.png"), "--device", "cuda:1"], "--device cuda:1"),
        (["eval", str(tmp_path / "a.npz"), "--ref", str(tmp_path / "b.npz"), "--device", "cuda"], "--device cuda"),
        (["app", "--model", str(fixture_dir("rar")), "--device", "cuda"], "--device cuda"),
        (["train", "--model", "rar", "--out", str(tmp_path / "run"), "data.source=mnist", "train.device=cuda"],
         "train.device cuda"),
        (_sample_args(tmp_path / "s.png", "--device", "gpu"), "--device 'gpu' is not a device"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and option in err, err
        assert "Traceback" not in err


def test_device_auto_says_what_it_picked(tmp_path, capsys, one_thread):
    from anyorder.cli.main import main

    assert main(_sample_args(tmp_path / "s.png", "--device", "auto")) == 0
    said = capsys.readouterr().out
    picked = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert f"--device auto: running on {picked} (" in said


def test_compiling_says_so_and_how_long_it_took(monkeypatch, capsys, one_thread):
    """A compiled generation of a new shape says it compiles, then how long it took; the next one of the
    same shape says nothing (a 25-50 s compile used to look like a hang)."""
    import importlib

    decode_lib = importlib.import_module("anyorder.sampling.decode")
    monkeypatch.setattr(decode_lib, "_COMPILED_SHAPES", set())
    model = _model("rar", "cpu")
    generate(model, [0, 1], compile="eager", top_k=1)
    err = capsys.readouterr().err
    assert "compiling the rar decode step (eager) for batch 2" in err
    assert re.search(r"compiled, and generated, in \d+\.\d s", err)
    generate(model, [1, 0], compile="eager", top_k=1)
    assert capsys.readouterr().err == ""
    generate(model, [1], compile="eager", top_k=1)  # another batch: compiles again
    assert "for batch 1" in capsys.readouterr().err


def test_tf32_mode_sets_and_restores_the_flags():
    """The flags of a CUDA device under ``--tf32`` / ``--no-tf32`` (set and restored whether CUDA exists or not,
    being plain flags); nothing changes for a CPU device."""
    from anyorder.nn.device import tf32_mode

    flags = (torch.backends.cuda.matmul, torch.backends.cudnn)
    before = [f.allow_tf32 for f in flags]
    for enabled in (True, False):
        with tf32_mode(enabled, torch.device("cuda")) as on:
            assert on is enabled and [f.allow_tf32 for f in flags] == [enabled, enabled]
        assert [f.allow_tf32 for f in flags] == before
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with tf32_mode(False, torch.device("cpu")) as on:
            assert on is False and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before[0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("flag", [None, "--no-tf32", "--tf32"])
def test_sample_runs_with_tf32_as_the_flag_says_and_records_it(device, flag, tmp_path, monkeypatch, one_thread):
    """``anyorder sample``: TF32 on by default for CUDA (as the official samplers and the benchmark), off with
    ``--no-tf32``, never on a CPU; in effect while sampling, recorded in the JSON, restored after."""
    import json

    from anyorder.cli import sample as sample_cli
    from anyorder.cli.main import main

    during = []
    real = sample_cli.sample_chunk
    monkeypatch.setattr(sample_cli, "sample_chunk", lambda *a, **kw: (
        during.append(torch.backends.cuda.matmul.allow_tf32), real(*a, **kw))[1])
    before = torch.backends.cuda.matmul.allow_tf32
    out = tmp_path / "s.png"
    assert main(_sample_args(out, "--device", device, *([flag] if flag else []))) == 0
    expected = device == "cuda" and flag != "--no-tf32"
    assert json.loads(out.with_suffix(".json").read_text())["tf32"] is expected
    if device == "cuda":
        assert during == [expected]
    assert torch.backends.cuda.matmul.allow_tf32 == before


# ---- evaluation on the device --------------------------------------------------------------------------------
@contextlib.contextmanager
def _tf32_everywhere() -> Iterator:
    """TF32 on for the whole process, as a command that set it and then evaluates would leave it."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("device", DEVICES)
def test_precision_recall_distances_run_without_tf32_on_the_device(device, monkeypatch):
    """Every distance block of precision / recall runs with TF32 off although it is on around the call (TF32
    rounds the inputs of the fp32 fallback to 10 bits), and the device gives the CPU's numbers."""
    import numpy as np

    from anyorder.evaluation import metrics

    seen = []
    for name in ("_sq_distances", "_sq_distances_fp16"):
        real = getattr(metrics, name)
        monkeypatch.setattr(metrics, name, lambda a, b, _real=real: (
            seen.append(torch.backends.cuda.matmul.allow_tf32), _real(a, b))[1])
    rng = np.random.default_rng(0)
    ref, smp = rng.normal(size=(300, 64)).astype(np.float32), rng.normal(0.3, 1.0, (280, 64)).astype(np.float32)
    with _tf32_everywhere():
        here = metrics.precision_recall(ref, smp, device=device, row_batch_size=128, col_batch_size=100)
    cpu = metrics.precision_recall(ref, smp, device="cpu", row_batch_size=128, col_batch_size=100)
    assert seen and not any(seen)
    assert abs(here[0] - cpu[0]) <= 1 / 280 and abs(here[1] - cpu[1]) <= 1 / 300  # a tie may flip one point


@pytest.mark.parametrize("device", DEVICES)
def test_inception_features_on_the_device_are_the_cpus_despite_tf32(device, tmp_path):
    """The feature network runs in exact fp32 inside ``compute_features`` whatever TF32 is around it: the
    device's features equal the CPU's to fp32 rounding (TF32 would move them by ~1e-3 relative)."""
    import numpy as np

    from anyorder.evaluation.evaluate import compute_features
    from anyorder.evaluation.inception import InceptionV3

    torch.manual_seed(0)
    net = InceptionV3()
    with torch.no_grad():  # He-initialised convolutions: features that vary with the image
        for v in net.state_dict().values():
            if v.ndim == 4:
                v.normal_(0.0, math.sqrt(2.0 / v[0].numel()))
    images = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    cpu = compute_features([images], net.eval(), 2, torch.device("cpu"), progress=False)
    with _tf32_everywhere():
        here = compute_features([images], net.to(device), 2, torch.device(device), progress=False)
    for key in ("pool", "spatial"):
        np.testing.assert_allclose(here[key], cpu[key], rtol=2e-4, atol=1e-5 * np.abs(cpu[key]).max(), err_msg=key)


# ---- bf16 autocast training on the device ----------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", ["rar", "randar"])
def test_bf16_autocast_training_steps_on_the_device(family, device, tmp_path, one_thread):
    """A few optimizer steps under bf16 autocast: finite losses, fp32 master weights that moved, and the
    same result when run again with the same seed (the per-step seeds cover the device's RNG; on CUDA up to
    the order of atomic adds in the embedding's backward)."""
    from anyorder.models import build_model
    from anyorder.training.config import TrainConfig
    from anyorder.training.loop import train

    tiny = {"rar": {"family": "rar", "dim": 32, "depth": 2, "n_head": 2, "mlp_hidden": 64, "seq_len": 16,
                    "codebook_size": 16, "num_classes": 3, "pos_extra": 2, "timestep_extra": 2},
            "randar": {"family": "randar", "dim": 32, "depth": 2, "n_head": 2, "seq_len": 16, "codebook_size": 16,
                       "num_classes": 3, "multiple_of": 16}}[family]
    g = torch.Generator().manual_seed(0)
    codes, labels = torch.randint(0, 16, (24, 4, 4), generator=g), torch.randint(0, 3, (24,), generator=g)

    def run(out):
        torch.manual_seed(0)
        model = build_model(tiny, device=device)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        cfg = TrainConfig(steps=3, batch_size=8, lr=3e-3, warmup_steps=1, ckpt_every=0, log_every=1,
                          device=device, precision="bf16")
        summary = train(model, codes, labels, cfg, out, progress=False)
        return model, start, summary

    model, start, summary = run(tmp_path / "a")
    assert all(math.isfinite(h["loss"]) for h in summary["history"]) and len(summary["history"]) == 3
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(v, start[k]) for k, v in model.state_dict().items() if v.is_floating_point())
    again, _, _ = run(tmp_path / "b")
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 if device == "cuda" else 0, msg=k)
