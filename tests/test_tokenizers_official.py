"""Official tokenizers (MaskGIT-VQGAN, LlamaGen VQ) against outputs of the official code, plus loading
errors and image pre-processing.

Fixture tests read ``../shared/fixtures`` (relative to the project root) at test time and take every
shape from the fixture's config JSON, so they also run on twins with other shapes and seeds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import adm_center_crop, fixture_dir
from PIL import Image

from anyorder.io import CheckpointError
from anyorder.io.images import center_crop_arr, load_image, save_image_grid
from anyorder.tokenizers.base import ImageTokenizer
from anyorder.tokenizers.llamagen_vq import LlamaGenVQ, LlamaGenVQConfig
from anyorder.tokenizers.maskgit_vqgan import MaskGITVQGAN, MaskGITVQGANConfig, SameConv2d
from anyorder.tokenizers.official import (
    config_from_dict,
    detect_tokenizer_kind,
    infer_config,
    load_official_tokenizer,
)

# folder, checkpoint, config, cases
FAMILIES = {
    "maskgit_vqgan": (
        "maskgit_vqgan",
        "vqgan_checkpoint.bin",
        "vqgan_config.json",
        "vqgan_cases.safetensors",
    ),
    "llamagen_vq": ("llamagen_vq", "vq_checkpoint.pt", "vq_config.json", "vq_cases.safetensors"),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread beats two contending ones


def _fixture(kind: str) -> tuple[Path, Path, dict, dict[str, torch.Tensor]]:
    """(checkpoint path, config path, config dict, cases) of one family; absent fixtures skip locally and
    fail under CI (:func:`conftest.fixture_dir`)."""
    from safetensors.torch import load_file

    folder, ckpt, cfg, cases = FAMILIES[kind]
    root = fixture_dir(folder)
    cfg_path = root / cfg
    return root / ckpt, cfg_path, json.loads(cfg_path.read_text()), load_file(str(root / cases))


def _grid_from_config(cfg: dict) -> tuple[int, int]:
    return tuple(int(v) for v in cfg["token_grid"])


# ---------------------------------------------------------------- MaskGIT-VQGAN vs official outputs


def test_maskgit_vqgan_matches_official() -> None:
    ckpt, cfg_path, cfg, cases = _fixture("maskgit_vqgan")
    tok = load_official_tokenizer(ckpt, cfg_path)
    assert isinstance(tok, MaskGITVQGAN) and isinstance(tok, ImageTokenizer)
    assert list(tok.config.channel_mult) == list(cfg["channel_mult"])
    assert tok.codebook_size == cfg["codebook_size"]
    assert not tok.training and not any(p.requires_grad for p in tok.parameters())

    images = cases["images"]
    grid = _grid_from_config(cfg)
    assert images.shape[-2] // tok.downsample == grid[0] and images.shape[-1] // tok.downsample == grid[1]

    with torch.no_grad():
        feats = tok.encoder_features(images)
    torch.testing.assert_close(feats, cases["encoder_out"], atol=1e-5, rtol=1e-4)

    codes = tok.encode(images)
    assert codes.dtype == torch.int64 and tuple(codes.shape) == (images.shape[0], *grid)
    assert torch.equal(codes, cases["codes"])

    decoded = tok.decode(cases["codes"])
    torch.testing.assert_close(decoded, cases["decoded"], atol=1e-4, rtol=0)
    assert decoded.min() >= 0 and decoded.max() <= 1
    torch.testing.assert_close(tok.decode(cases["random_codes"]), cases["random_decoded"], atol=1e-4, rtol=0)

    # flat [B, h*w] codes are accepted as well; the unclamped path agrees inside [0, 1]
    flat = cases["codes"].reshape(cases["codes"].shape[0], -1)
    if grid[0] == grid[1]:
        torch.testing.assert_close(tok.decode(flat), decoded, atol=0, rtol=0)
    torch.testing.assert_close(tok.decode_raw(cases["codes"]).clamp(0, 1), decoded, atol=0, rtol=0)


def test_maskgit_vqgan_config_inferred_from_state_dict() -> None:
    ckpt, _, cfg, cases = _fixture("maskgit_vqgan")
    tok = load_official_tokenizer(ckpt)  # no config: shapes from the weights
    assert isinstance(tok, MaskGITVQGAN)
    assert list(tok.config.channel_mult) == list(cfg["channel_mult"])
    assert tok.config.hidden_channels == cfg["hidden_channels"]
    assert tok.config.num_res_blocks == cfg["num_res_blocks"]
    assert torch.equal(tok.encode(cases["images"]), cases["codes"])


# ---------------------------------------------------------------- LlamaGen VQ vs official outputs


def test_llamagen_vq_matches_official() -> None:
    ckpt, cfg_path, cfg, cases = _fixture("llamagen_vq")
    tok = load_official_tokenizer(ckpt, cfg_path)
    assert isinstance(tok, LlamaGenVQ)
    assert tok.config.ch == cfg["ch"] and list(tok.config.ch_mult) == list(cfg["ch_mult"])
    assert tok.codebook_size == cfg["codebook_size"]
    assert tok.config.codebook_l2_norm == cfg.get("codebook_l2_norm", True)

    images = cases["images"]  # official range [-1, 1]
    grid = _grid_from_config(cfg)
    codes = tok.encode_raw(images)
    assert codes.dtype == torch.int64 and tuple(codes.shape) == (images.shape[0], *grid)
    assert torch.equal(codes, cases["codes"])

    raw = tok.decode_raw(cases["codes"])
    torch.testing.assert_close(raw, cases["decoded"], atol=1e-4, rtol=0)
    torch.testing.assert_close(tok.decode_raw(cases["random_codes"]), cases["random_decoded"], atol=1e-4, rtol=0)

    # public API in [0, 1]: (x + 1) / 2, clamped; encode converts back to [-1, 1]
    torch.testing.assert_close(tok.decode(cases["codes"]), ((raw + 1) / 2).clamp(0, 1), atol=0, rtol=0)
    codes01 = tok.encode((images + 1) / 2)
    assert (codes01 == cases["codes"]).float().mean() >= 0.95  # only ulp-level input differences


def test_llamagen_vq_config_inferred_from_state_dict() -> None:
    ckpt, _, cfg, cases = _fixture("llamagen_vq")
    tok = load_official_tokenizer(ckpt)
    assert isinstance(tok, LlamaGenVQ)
    assert tok.config.ch == cfg["ch"] and list(tok.config.ch_mult) == list(cfg["ch_mult"])
    assert tok.config.codebook_embed_dim == cfg["codebook_embed_dim"]
    assert tok.config.num_res_blocks == cfg["num_res_blocks"]
    # codebook_l2_norm cannot be read off the weights (the released default, True, is used)
    if cfg.get("codebook_l2_norm", True):
        assert torch.equal(tok.encode_raw(cases["images"]), cases["codes"])


# ---------------------------------------------------------------- wrong checkpoints / configs


def test_fixture_checkpoint_with_wrong_config_names_keys_and_shapes() -> None:
    ckpt, _, cfg, _ = _fixture("maskgit_vqgan")
    wrong = dict(cfg, hidden_channels=cfg["hidden_channels"] * 2)
    with pytest.raises(CheckpointError) as err:
        load_official_tokenizer(ckpt, wrong)
    msg = str(err.value)
    assert str(ckpt) in msg and "encoder.conv_in.weight" in msg and "shape" in msg

    ckpt, _, cfg, _ = _fixture("llamagen_vq")
    wrong = dict(cfg, num_res_blocks=cfg["num_res_blocks"] + 1)
    with pytest.raises(CheckpointError) as err:
        load_official_tokenizer(ckpt, wrong)
    msg = str(err.value)
    assert "missing keys" in msg and f"encoder.conv_blocks.0.res.{cfg['num_res_blocks']}." in msg

    wrong = dict(cfg, codebook_size=cfg["codebook_size"] + 1)
    with pytest.raises(CheckpointError, match=r"quantize\.embedding\.weight"):
        load_official_tokenizer(ckpt, wrong)


def test_fixture_kind_detection_and_contradiction() -> None:
    ckpt, _, _, _ = _fixture("llamagen_vq")
    with pytest.raises(CheckpointError, match="llamagen_vq"):
        load_official_tokenizer(ckpt, kind="maskgit_vqgan")
    assert isinstance(load_official_tokenizer(ckpt, kind="llamagen"), LlamaGenVQ)


def _tiny_maskgit() -> MaskGITVQGAN:
    torch.manual_seed(0)
    return MaskGITVQGAN(
        MaskGITVQGANConfig(
            channel_mult=(1, 2),
            hidden_channels=32,
            num_res_blocks=1,
            z_channels=32,
            codebook_size=16,
            resolution=8,
        )
    ).eval()


def _tiny_llamagen() -> LlamaGenVQ:
    torch.manual_seed(0)
    cfg = LlamaGenVQConfig(
        ch=32,
        ch_mult=(1, 2),
        z_channels=32,
        codebook_size=16,
        codebook_embed_dim=4,
        num_res_blocks=1,
        image_size=8,
    )
    return LlamaGenVQ(cfg).eval()


def test_roundtrip_and_kind_detection_on_synthetic_checkpoints(tmp_path: Path) -> None:
    images = torch.rand(2, 3, 8, 8)
    for model, wrap in ((_tiny_maskgit(), False), (_tiny_llamagen(), True)):
        sd = model.state_dict()
        path = tmp_path / f"{type(model).__name__}.pt"
        torch.save({"model": sd} if wrap else sd, path)
        expected_kind = "llamagen_vq" if wrap else "maskgit_vqgan"
        assert detect_tokenizer_kind(sd) == expected_kind
        inferred = infer_config(expected_kind, sd)
        size_field = "image_size" if wrap else "resolution"  # the only field the weights cannot tell
        assert dataclasses.replace(inferred, **{size_field: getattr(model.config, size_field)}) == model.config
        loaded = load_official_tokenizer(path)
        assert type(loaded) is type(model)
        codes = loaded.encode(images)
        assert torch.equal(codes, model.encode(images)) and codes.shape == (2, 4, 4)
        out = loaded.decode(codes)
        assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
        with pytest.raises(ValueError, match="codes must lie"):
            loaded.decode(torch.full((1, 4, 4), loaded.codebook_size))
        with pytest.raises(ValueError, match="not divisible"):
            loaded.encode(torch.rand(1, 3, 7, 7))


def test_synthetic_checkpoint_wrong_config(tmp_path: Path) -> None:
    model = _tiny_maskgit()
    path = tmp_path / "vqgan.bin"
    torch.save(model.state_dict(), path)
    cfg = {
        "channel_mult": [1, 2],
        "hidden_channels": 32,
        "num_res_blocks": 1,
        "z_channels": 64,
        "codebook_size": 16,
    }
    with pytest.raises(CheckpointError) as err:
        load_official_tokenizer(path, cfg)
    msg = str(err.value)
    assert "quantize.embedding.weight: checkpoint (16, 32) vs model (16, 64)" in msg and "vqgan.bin" in msg


def test_config_dict_validation() -> None:
    with pytest.raises(ValueError, match="bogus_key"):
        config_from_dict("maskgit_vqgan", {"channel_mult": [1, 2], "bogus_key": 1})
    with pytest.raises(ValueError, match="hidden_channels"):  # a MaskGIT key in a LlamaGen config
        config_from_dict("llamagen_vq", {"hidden_channels": 32})
    with pytest.raises(ValueError, match="num_resolutions"):
        config_from_dict("maskgit_vqgan", {"channel_mult": [1, 2], "num_resolutions": 3})
    with pytest.raises(ValueError, match="token_grid"):
        config_from_dict("llamagen_vq", {"ch_mult": [1, 2], "image_size": 16, "token_grid": [4, 4]})
    assert config_from_dict("maskgit_vqgan", {}) == MaskGITVQGANConfig()  # released defaults
    assert config_from_dict("llamagen_vq", {}) == LlamaGenVQConfig()
    assert config_from_dict("llamagen", {"encoder_ch_mult": [1, 2]}).ch_mult == (1, 2)


def test_same_conv_padding() -> None:
    conv = SameConv2d(1, 1, kernel_size=3, stride=2, bias=False)
    assert conv(torch.zeros(1, 1, 7, 7)).shape[-2:] == (4, 4)
    conv1 = SameConv2d(2, 2, kernel_size=3, bias=False)
    ref = torch.nn.functional.conv2d(x := torch.randn(1, 2, 5, 6), conv1.weight, padding=1)
    torch.testing.assert_close(conv1(x), ref)


# ---------------------------------------------------------------- pre-processing


def test_load_image_valid_and_errors(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 256, size=(7, 10, 3), dtype=np.uint8)
    good = tmp_path / "good.png"
    Image.fromarray(arr).save(good)
    img = load_image(good)
    assert img.shape == (3, 7, 10) and img.dtype == torch.float32
    torch.testing.assert_close(img, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
    assert load_image(good, image_size=4).shape == (3, 4, 4)

    corrupt = tmp_path / "corrupt_image.png"
    corrupt.write_bytes(b"this is not an image at all")
    with pytest.raises(ValueError, match="corrupt_image.png"):
        load_image(corrupt)

    truncated = tmp_path / "truncated.png"
    big = np.random.default_rng(1).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(big).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.png"):
        load_image(truncated)

    with pytest.raises(ValueError, match="missing.png"):
        load_image(tmp_path / "missing.png")


@pytest.mark.parametrize("size_in,target", [((300, 200), 64), ((50, 80), 64), ((64, 64), 64), ((1000, 130), 32)])
def test_center_crop_arr_size(size_in: tuple[int, int], target: int) -> None:
    img = Image.new("RGB", size_in, (10, 200, 30))
    out = center_crop_arr(img, target)
    assert out.size == (target, target)
    assert np.all(np.asarray(out) == np.array([10, 200, 30], dtype=np.uint8))  # uniform stays uniform


def _test_picture(w: int, h: int, kind: str, mode: str = "RGB") -> Image.Image:
    """Non-trivial content: uniform noise, or smooth gradients with a sharp diagonal edge."""
    if kind == "noise":
        arr = np.random.default_rng(w * 1000 + h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    else:
        y, x = np.mgrid[0:h, 0:w]
        arr = np.stack([255 * x / max(1, w - 1), 255 * y / max(1, h - 1), 255.0 * (x + 2 * y > w)], -1)
        arr = arr.round().astype(np.uint8)
    return Image.fromarray(arr).convert(mode)


@pytest.mark.parametrize("kind", ["noise", "gradient"])
@pytest.mark.parametrize("size_in,target", [
    ((300, 200), 64),   # BOX 150x100, BICUBIC 96x64, crop at x 16
    ((50, 80), 64),     # BICUBIC up to 64x102, crop at y 19
    ((257, 383), 100),  # odd sides: BOX 128x191, BICUBIC 100x149, crop at y 24
    ((129, 67), 35),    # odd target: BICUBIC 67x35, crop at x 16
    ((1000, 130), 32),  # BOX 500x65, BOX 250x32, nothing left to resize, crop at x 109
    ((31, 31), 17),     # square, odd: BICUBIC 17x17
])
def test_center_crop_arr_is_adms_box_then_bicubic_pipeline(size_in, target, kind) -> None:
    """The crop equals ADM's pipeline spelled out with PIL (:func:`conftest.adm_center_crop`), pixel for
    pixel, on noise and gradients, RGB and grey."""
    for mode in ("RGB", "L"):
        img = _test_picture(*size_in, kind, mode)
        out = center_crop_arr(img, target)
        assert out.mode == mode and out.size == (target, target)
        np.testing.assert_array_equal(np.asarray(out), adm_center_crop(img, target), err_msg=f"{mode} {size_in}")


def test_save_image_grid(tmp_path: Path) -> None:
    images = torch.rand(5, 3, 8, 8)
    path = save_image_grid(images, tmp_path / "sub" / "grid.png", nrow=3)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (3 * 10 + 2, 2 * 10 + 2)
        arr = np.asarray(im.convert("RGB"))
    # tile 4 (row 1, col 1) starts at (2 + 10, 2 + 10)
    expected = (images[4].permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    assert np.array_equal(arr[12:20, 12:20], expected)
    assert np.all(arr[:2] == 0)


def test_llamagen_checkpoint_without_usage_buffer_loads(tmp_path: Path) -> None:
    model = _tiny_llamagen()
    sd = {k: v for k, v in model.state_dict().items() if k != "quantize.codebook_used"}
    path = tmp_path / "vq.safetensors"
    from safetensors.torch import save_file

    save_file(sd, str(path))
    cfg = dataclasses.asdict(model.config)
    loaded = load_official_tokenizer(path, cfg, kind="llamagen_vq")
    assert "quantize.codebook_used" not in loaded.state_dict()
    images = torch.rand(1, 3, 8, 8)
    assert torch.equal(loaded.encode(images), model.encode(images))
