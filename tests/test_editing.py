"""Zero-shot editing with RandAR (anyorder.editing): inpainting, outpainting, extrapolation, features, CLI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from anyorder import editing as E
from anyorder.hub import build_model, save_pretrained
from anyorder.nn import orders as orders_lib
from anyorder.nn.rope import rope_2d, rope_2d_mixed
from anyorder.nn.schedules import GuidanceSchedule, parallel_decoding_schedule
from anyorder.sampling import DecodeJob, GuidanceRows, RandARSampling, decode, generate

CFG = {"family": "randar", "dim": 32, "depth": 2, "n_head": 2, "seq_len": 16, "codebook_size": 16,
       "num_classes": 3, "multiple_of": 16}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(CFG).eval()
    with torch.no_grad():  # the head is zero-initialised; give it weights so the logits mean something
        m.transformer.final.head.weight.normal_(0, 0.5)
        m.pos_instruct_embeddings.normal_(0, 0.5)
    return m


@pytest.fixture
def codes():
    return torch.randint(0, 16, (3, 4, 4), generator=torch.Generator().manual_seed(1))


# ---- inpainting -----------------------------------------------------------------------------------------
def test_inpaint_keeps_known_tokens(model, codes):
    mask = E.half_mask(4, "left")
    out = E.inpaint(model, codes, mask, [0, 1, 2], guidance_scale=3.0, seed=0, steps=4)
    assert out.shape == codes.shape and out.dtype == torch.long
    assert torch.equal(out[:, ~mask], codes[:, ~mask])
    assert (out[:, mask] != codes[:, mask]).any()  # something was generated


def test_inpaint_per_sample_masks_with_different_counts(model, codes):
    masks = torch.stack([E.half_mask(4, "top"), E.box_mask(4, 1, 1, 2, 2), torch.zeros(4, 4, dtype=torch.bool)])
    out = E.inpaint(model, codes, masks, 1, seed=3, steps=3)
    assert torch.equal(out[~masks], codes[~masks])
    assert torch.equal(out[2], codes[2])


def test_inpaint_empty_mask_returns_input(model, codes):
    out = E.inpaint(model, codes, torch.zeros(4, 4, dtype=torch.bool), [0, 1, 2], guidance_scale=2.0, seed=0)
    assert torch.equal(out, codes)


@pytest.mark.parametrize("steps,scale", [(None, 1.0), (6, 3.0)])
def test_inpaint_full_mask_is_ordinary_sampling(model, codes, steps, scale):
    full = torch.ones(4, 4, dtype=torch.bool)
    out = E.inpaint(model, codes, full, [0, 1, 2], guidance_scale=scale, steps=steps, seed=7)
    ref = generate(model, [0, 1, 2], guidance_scale=scale, steps=steps, seed=7)
    assert torch.equal(out, ref)
    orders = torch.stack([torch.randperm(16) for _ in range(3)])
    out = E.inpaint(model, codes, full, [0, 1, 2], orders=orders, steps=steps, top_k=1)
    ref = generate(model, [0, 1, 2], orders=orders, steps=steps, top_k=1)
    assert torch.equal(out, ref)


def test_known_first_orders_is_a_stable_partition():
    orders = torch.tensor([[3, 0, 2, 1], [0, 1, 2, 3]])
    unknown = torch.tensor([[True, False, False, True], [False, False, False, False]])
    assert E.known_first_orders(orders, unknown).tolist() == [[2, 1, 3, 0], [0, 1, 2, 3]]


def test_decode_with_the_trained_table_is_the_default(model, codes):
    """Passing the model's own RoPE table to the shared loop changes nothing."""
    B, T, P = 3, 16, 6
    orders = orders_lib.random_orders(B, T, generator=torch.Generator().manual_seed(0))
    prefix = orders_lib.permute(codes.reshape(B, T), orders)[:, :P]
    plan = parallel_decoding_schedule(4, T - P)
    g = GuidanceSchedule("linear", 2.5, start=1.0)
    cls = torch.tensor([0, 1, 2])
    with torch.no_grad():
        ref = decode(_job(model, cls, orders, plan, g, generator=torch.Generator().manual_seed(5), prefix=prefix))
        out = decode(_job(model, cls, orders, plan, g, generator=torch.Generator().manual_seed(5), prefix=prefix,
                          table=rope_2d(4, 16)))
    assert torch.equal(out, ref)


def _job(model, cls, orders, plan, g: GuidanceSchedule, top_k: int = 0, **parts) -> DecodeJob:
    """A decode job with RandAR's policy for the linear schedule ``g`` (the loop's own inputs, built by hand)."""
    policy = RandARSampling(guidance_scale=g.scale, guidance_start=g.start, top_k=top_k)
    return DecodeJob(model, cls, orders, plan, policy, parts.pop("generator", None), tuple(model.grid), **parts)


@pytest.mark.parametrize("class_scale", [1.0, 3.0])
def test_spatial_guidance_with_nothing_dropped_is_class_guidance_alone(model, codes, class_scale):
    """With no context token dropped the spatially-unconditional row equals its conditional one, so the
    three-row mix reduces to plain class guidance (and the two-row spatial mix to no guidance)."""
    B, T, P = 3, 16, 5
    orders = orders_lib.random_orders(B, T, generator=torch.Generator().manual_seed(1))
    prefix = orders_lib.permute(codes.reshape(B, T), orders)[:, :P]
    plan = parallel_decoding_schedule(5, T - P)
    g = GuidanceSchedule("linear", class_scale, start=1.0)
    cls = torch.tensor([0, 1, 2])
    with torch.no_grad():
        ref = decode(_job(model, cls, orders, plan, g, top_k=1, prefix=prefix))
        out = decode(_job(model, cls, orders, plan, g, top_k=1, prefix=prefix,
                          spatial=GuidanceSchedule("linear", 4.0, start=1.0), drop=torch.zeros(B, P)))
    assert torch.equal(out, ref)
    # the dropped row is fed the prefix's embeddings with the dropped ones zeroed, the others as they are
    drop = torch.zeros(B, P)
    drop[:, 1] = 1
    rows = GuidanceRows(g, GuidanceSchedule("linear", 4.0, start=1.0), drop)
    with torch.no_grad():
        fed, emb = rows.context(model, prefix), model.tok_embeddings(prefix)
    assert fed.shape == (len(rows) * B, P, emb.shape[-1])
    torch.testing.assert_close(fed[:B], emb, rtol=0, atol=0)
    assert fed[-B:, 1].abs().sum() == 0 and torch.equal(fed[-B:, 0], emb[:, 0])


def test_guidance_rows_mix_as_documented():
    c, us, u = torch.full((1, 1, 2), 3.0), torch.full((1, 1, 2), 1.0), torch.full((1, 1, 2), 0.5)
    const = lambda s: GuidanceSchedule("linear", s, start=s)  # noqa: E731
    both = GuidanceRows(const(2.0), const(4.0), torch.zeros(1, 1))
    assert len(both) == 3
    torch.testing.assert_close(both.combine(torch.cat([c, us, u]), 0, 10), 0.5 + 2 * (3 - 1) + 4 * (1 - 0.5) + 0 * c)
    spatial = GuidanceRows(const(1.0), const(4.0), torch.zeros(1, 1))
    assert len(spatial) == 2 and spatial.classes(torch.tensor([7]), 9).tolist() == [7, 7]
    torch.testing.assert_close(spatial.combine(torch.cat([c, u]), 0, 10), 0.5 + 4 * (3 - 0.5) + 0 * c)
    assert both.classes(torch.tensor([7]), 9).tolist() == [7, 9, 9]
    assert len(GuidanceRows(const(1.0))) == 1 and len(GuidanceRows(const(2.0), const(3.0), None)) == 2


# ---- outpainting ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rope", ["extrapolate", "ntk", "window"])
def test_outpaint_larger_canvas_keeps_known(model, codes, rope):
    out, unknown = E.outpaint(model, codes, [0, 1, 2], right=4, guidance_scale=2.0, seed=0, rope=rope,
                              return_mask=True)
    assert out.shape == (3, 4, 8)
    assert torch.equal(out[:, :, :4], codes)
    assert unknown.sum() == 16 and not unknown[:, :4].any()
    out = E.outpaint(model, codes, 0, left=1, top=2, bottom=1, seed=1, rope=rope, steps=5)
    assert out.shape == (3, 7, 5) and torch.equal(out[:, 2:6, 1:], codes)


def test_outpaint_within_trained_grid_is_inpainting(model, codes):
    keep = codes[:, :, :2]
    out = E.outpaint(model, keep, [0, 1, 2], right=2, seed=4, steps=3)
    ref = E.inpaint(model, torch.cat([keep, torch.zeros_like(keep)], 2), E.half_mask(4, "right"), [0, 1, 2],
                    seed=4, steps=3)
    assert out.shape == (3, 4, 4) and torch.equal(out[:, :, :2], keep) and torch.equal(out, ref)


# ---- RoPE tables for larger grids ----------------------------------------------------------------------------
def test_outpaint_tables_agree_with_the_trained_table(model):
    g, F = 4, 16 // 4  # grid, frequency pairs per axis (head_dim 16)
    trained = model.freqs_cis
    assert torch.equal(E.outpaint_table(model, (g, g), "extrapolate"), trained)
    assert torch.equal(E.outpaint_table(model, (g, g), "ntk"), trained)
    wide = E.outpaint_table(model, (g, 2 * g), "extrapolate")
    grid_w = wide[1:].view(g, 2 * g, F * 2, 2)
    # every position inside the trained grid gets exactly its trained row
    torch.testing.assert_close(grid_w[:, :g].reshape(g * g, 2 * F, 2), trained[1:], rtol=0, atol=0)
    assert wide[0].abs().sum() == 0
    ntk = E.outpaint_table(model, (g, 2 * g), "ntk", ntk_boundary=1)[1:].view(g, 2 * g, 2 * F, 2)
    tr = trained[1:].view(g, g, 2 * F, 2)
    # rows are not scaled (factor 1): the row half equals the trained one on every column
    torch.testing.assert_close(ntk[:, :, :F], tr[:, :1, :F].expand(g, 2 * g, F, 2), rtol=0, atol=0)
    # the column half: the kept (highest-frequency) pair uses the true columns, the others squeezed ones
    torch.testing.assert_close(ntk[:, :, F:F + 1], grid_w[:, :, F:F + 1], rtol=0, atol=0)
    assert not torch.allclose(ntk[:, -1, F + 1:], grid_w[:, -1, F + 1:])


@pytest.mark.parametrize("boundary", [0, 1, 2, 4])
def test_mixed_table_keeps_trained_frequencies(boundary):
    g, G, hd, F = 4, 8, 16, 4
    trained = rope_2d(g, hd)[1:].view(g, g, 2 * F, 2)
    true_big = rope_2d(G, hd)[1:].view(G, G, 2 * F, 2)
    mixed_full = rope_2d_mixed(G, hd, 2.0, boundary)
    assert mixed_full[0].abs().sum() == 0  # the class row stays zero
    mixed = mixed_full[1:].view(G, G, 2 * F, 2)
    kept = torch.zeros(2 * F, dtype=torch.bool)
    kept[:boundary] = kept[F : F + boundary] = True
    # extrapolated (high-frequency) pairs: the true positions of the large grid, hence the trained
    # table's values at every position inside the trained range
    torch.testing.assert_close(mixed[:, :, kept], true_big[:, :, kept], rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[:g, :g][:, :, kept], trained[:, :, kept], rtol=0, atol=1e-6)
    # interpolated pairs: positions squeezed into the trained range; the corners hit it exactly
    torch.testing.assert_close(mixed[0, 0], trained[0, 0], rtol=0, atol=0)
    torch.testing.assert_close(mixed[-1, -1][~kept], trained[-1, -1][~kept], rtol=0, atol=1e-6)
    if boundary < F:
        assert not torch.allclose(mixed[-1, -1][~kept], true_big[-1, -1][~kept], atol=1e-3)
    if boundary == F:
        torch.testing.assert_close(mixed_full, rope_2d(G, hd), rtol=0, atol=1e-6)


# ---- resolution extrapolation ---------------------------------------------------------------------------
@pytest.mark.parametrize("spatial", [1.0, 2.0])
def test_extrapolate_places_low_res_on_the_even_grid(model, spatial):
    out, low = E.extrapolate(model, [0, 1], guidance_scale=2.0, spatial_guidance_scale=spatial, seed=0, steps=8,
                             low_res_steps=4, return_low_res=True)
    assert out.shape == (2, 8, 8) and low.shape == (2, 4, 4)
    assert torch.equal(out[:, ::2, ::2], low)
    given = torch.randint(0, 16, (2, 4, 4))
    out = E.extrapolate(model, [0, 1], low_res=given, spatial_guidance_scale=spatial, seed=1, steps=8)
    assert torch.equal(out[:, ::2, ::2], given)


def test_extrapolate_random_order_and_errors(model):
    assert E.extrapolate(model, [2], mode="random", seed=0, steps=6).shape == (1, 8, 8)
    with pytest.raises(ValueError, match="hierarchical"):
        E.extrapolate(model, [2], mode="random", spatial_guidance_scale=2.0)
    with pytest.raises(ValueError, match="integer factor"):
        E.extrapolate(model, [2], factor=1.5)
    with pytest.raises(ValueError, match="ntk_boundary"):
        E.extrapolate(model, [2], ntk_boundary=9)


def test_hierarchical_orders():
    o = E.hierarchical_orders(3, (6, 6), 2, torch.Generator().manual_seed(0))
    assert orders_lib.is_permutation(o)
    first = o[:, :9]
    assert ((first // 6) % 2 == 0).all() and ((first % 6) % 2 == 0).all()


# ---- masks ----------------------------------------------------------------------------------------------
def test_mask_helpers():
    assert E.half_mask(7, "left")[:, :4].all() and not E.half_mask(7, "left")[:, 4:].any()
    assert E.half_mask((4, 6), "bottom").sum() == 12 and E.half_mask((4, 6), "bottom")[2:].all()
    assert E.box_mask(4, 1, 2, 2, 2).sum() == 4
    with pytest.raises(ValueError, match="does not fit"):
        E.box_mask(4, 3, 3, 2, 2)
    with pytest.raises(ValueError, match="side"):
        E.half_mask(4, "middle")


def test_mask_from_image_snaps_and_validates(tmp_path):
    pix = np.zeros((8, 8), dtype=np.uint8)
    pix[0, 0] = 255  # one pixel of token (0, 0)
    pix[4:8, 4:8] = 255  # all of token (1, 1)
    pix[4:7, 0:4] = 255  # 12 of 16 pixels of token (1, 0)
    any_ = E.mask_from_image(pix, 8, 2)
    assert any_.tolist() == [[True, False], [True, True]]
    assert E.mask_from_image(pix, 8, 2, rule="majority").tolist() == [[False, False], [True, True]]
    assert E.mask_from_image(pix, 8, 2, rule="all").tolist() == [[False, False], [False, True]]
    path = tmp_path / "mask.png"
    Image.fromarray(pix).save(path)
    assert torch.equal(E.mask_from_image(path, 8, 2), any_)
    assert torch.equal(E.mask_from_image(torch.from_numpy(pix > 0)[None], 8, 2)[0], any_)
    with pytest.raises(ValueError, match=r"shape \(8, 8\).*16x16"):
        E.mask_from_image(pix, 16, 4)
    grey = pix.copy()
    grey[1, 1] = 128
    with pytest.raises(ValueError, match="binary.*128"):
        E.mask_from_image(grey, 8, 2)
    with pytest.raises(ValueError, match="not a multiple"):
        E.mask_from_image(pix, 8, 3)


def test_inpaint_rejects_bad_token_masks(model, codes):
    with pytest.raises(ValueError, match="token mask has shape"):
        E.inpaint(model, codes, torch.zeros(3, 3, dtype=torch.bool), 0)
    with pytest.raises(ValueError, match="bool"):
        E.inpaint(model, codes, torch.full((4, 4), 0.5), 0)
    with pytest.raises(ValueError, match="grid"):
        E.inpaint(model, codes[:, :3], torch.zeros(4, 4, dtype=torch.bool), 0)


# ---- RAR is refused -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rar():
    return build_model({"family": "rar", "dim": 32, "depth": 1, "n_head": 2, "mlp_hidden": 64, "seq_len": 16,
                        "codebook_size": 16, "num_classes": 3}).eval()


def test_rar_refused_by_the_api(rar, codes):
    mask = E.half_mask(4)
    for call in (lambda: E.inpaint(rar, codes, mask, 0), lambda: E.outpaint(rar, codes, 0, right=2),
                 lambda: E.extrapolate(rar, [0]), lambda: E.features(rar, codes)):
        with pytest.raises(ValueError, match="needs a model family with the '.*' capability.*got RAR"):
            call()


def test_a_randar_trained_into_a_scan_order_is_warned_about(codes):
    scan = build_model({**CFG, "order": "raster"}).eval()
    with pytest.warns(UserWarning, match="'raster' scan order; inpainting runs it in random orders") as rec:
        E.inpaint(scan, codes, E.half_mask(4), 0)
    assert len(rec) == 1 and rec[0].filename == __file__  # reported at the caller's line
    with pytest.warns(UserWarning, match="bidirectional feature extraction runs it in random orders"):
        E.features(scan, codes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        E.features(scan, codes, mode="raster")  # its own (raster) order: no warning
        E.inpaint(build_model(CFG).eval(), codes, E.half_mask(4), 0)  # a random-order RandAR: no warning


# ---- features -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("read", ["instruction", "token"])
def test_features_shapes_and_bidirectionality(model, codes, read):
    per_token, pooled = E.features(model, codes, seed=0, read=read)
    assert per_token.shape == (3, 16, 32) and pooled.shape == (3, 32)
    torch.testing.assert_close(pooled, per_token.mean(1))
    later = codes.clone()
    later[:, 3, 2] = (later[:, 3, 2] + 1) % 16  # a late token in raster order (position 14)
    bi, _ = E.features(model, later, seed=0, read=read)
    ra, _ = E.features(model, codes, mode="raster", read=read)
    ra2, _ = E.features(model, later, mode="raster", read=read)
    # bidirectional: the first raster position's feature depends on the later token; raster: it does not
    assert (bi[:, 0] - per_token[:, 0]).abs().max() > 1e-4
    seen_from = 14 if read == "token" else 15  # an instruction slot sees the tokens strictly before it
    assert torch.equal(ra2[:, :seen_from], ra[:, :seen_from])
    assert (ra2[:, seen_from:] - ra[:, seen_from:]).abs().max() > 1e-4
    # several orders average; a fixed order is deterministic; layers and classes are options
    avg, _ = E.features(model, codes, num_orders=3, seed=0)
    assert avg.shape == per_token.shape
    fixed = torch.randperm(16)
    a, _ = E.features(model, codes, orders=fixed, seed=None)
    b, _ = E.features(model, codes, orders=fixed, seed=None)
    assert torch.equal(a, b)
    byl = E.features_by_layer(model, codes, classes=[0, 1, 2], layers=[1, 2], seed=0)
    assert set(byl) == {1, 2} and byl[2][1].shape == (3, 32)
    with pytest.raises(ValueError, match="layer"):
        E.features(model, codes, layer=3)
    assert E.default_feature_layer(36) == 24 and E.default_feature_layer(2) == 1


# ---- CLI ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, model):
    from anyorder.tokenizers.demo_vq import DemoVQ, DemoVQConfig

    d = tmp_path_factory.mktemp("run")
    save_pretrained(model, d / "model")
    torch.manual_seed(0)
    save_pretrained(DemoVQ(DemoVQConfig(codebook_size=16, image_size=16, code_dim=8, hidden=16)), d / "tokenizer")
    img = (np.random.default_rng(0).random((16, 16)) * 255).astype(np.uint8)
    Image.fromarray(img).save(d / "digit.png")
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[:, :8] = 255
    Image.fromarray(mask).save(d / "mask.png")
    return d


def _main(argv):
    from anyorder.cli import main

    return main([str(a) for a in argv])


def test_cli_editing_commands(run_dir, tmp_path):
    base = ["--model", run_dir, "--seed", "1"]
    assert _main(["inpaint", *base, "--image", run_dir / "digit.png", "--mask", run_dir / "mask.png", "--class", "1",
                  "--guidance-scale", "2", "--steps", "4", "--samples", "2", "--out", tmp_path / "inp.png"]) == 0
    meta = json.loads((tmp_path / "inp.json").read_text())
    assert meta["regenerated_tokens"] == 8 and meta["class"] == 1
    assert Image.open(tmp_path / "inp.png").size[0] > 4 * 16
    assert _main(["inpaint", *base, "--image", run_dir / "digit.png", "--side", "top",
                  "--out", tmp_path / "t.png"]) == 0
    assert _main(["outpaint", *base, "--image", run_dir / "digit.png", "--side", "right",
                  "--out", tmp_path / "out.png"]) == 0
    assert json.loads((tmp_path / "out.json").read_text())["canvas"] == [4, 8]
    assert _main(["outpaint", *base, "--image", run_dir / "digit.png", "--side", "left", "--within",
                  "--out", tmp_path / "within.png"]) == 0
    assert json.loads((tmp_path / "within.json").read_text())["canvas"] == [4, 4]
    assert _main(["extrapolate", *base, "--classes", "0", "2", "--spatial-guidance-scale", "2",
                  "--guidance-scale", "2", "--steps", "8", "--out", tmp_path / "ex.png"]) == 0
    assert json.loads((tmp_path / "ex.json").read_text())["grid"] == [8, 8]
    assert _main(["features", *base, "--image", run_dir / "digit.png", run_dir / "digit.png",
                  "--out", tmp_path / "f.safetensors"]) == 0
    assert json.loads((tmp_path / "f.json").read_text())["pooled_shape"] == [2, 32]


def test_cli_errors(run_dir, rar, tmp_path, capsys):
    save_pretrained(rar, tmp_path / "rar" / "model")
    img = run_dir / "digit.png"
    assert _main(["inpaint", "--model", tmp_path / "rar", "--image", img, "--side", "left"]) == 2
    assert "needs a model family with the 'known_tokens' capability" in capsys.readouterr().err
    assert _main(["inpaint", "--model", run_dir, "--image", img]) == 2
    assert "exactly one of --mask" in capsys.readouterr().err
    bad = np.full((16, 16), 128, dtype=np.uint8)
    Image.fromarray(bad).save(tmp_path / "grey.png")
    assert _main(["inpaint", "--model", run_dir, "--image", img, "--mask", tmp_path / "grey.png"]) == 2
    assert "binary" in capsys.readouterr().err
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "small.png")
    assert _main(["inpaint", "--model", run_dir, "--image", img, "--mask", tmp_path / "small.png"]) == 2
    assert "(8, 8)" in capsys.readouterr().err
