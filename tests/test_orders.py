"""Scan orders and permutations (RAR Table 3)."""

from __future__ import annotations

import pytest
import torch

from anyorder.nn import orders as O


@pytest.mark.parametrize("name", sorted(O.SCAN_ORDERS))
@pytest.mark.parametrize("h,w", [(1, 1), (2, 3), (4, 4), (7, 7), (5, 8)])
def test_every_scan_order_is_a_permutation(name, h, w):
    order = O.scan_order(name, h, w)
    assert order.dtype == torch.long and order.shape == (h * w,)
    assert O.is_permutation(order)


def test_scan_orders_on_a_3x3_grid():
    assert O.raster(3, 3).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert O.spiral_in(3, 3).tolist() == [0, 1, 2, 5, 8, 7, 6, 3, 4]
    assert O.spiral_out(3, 3).tolist() == [4, 3, 6, 7, 8, 5, 2, 1, 0]
    assert O.alternate(3, 3).tolist() == [0, 1, 2, 5, 4, 3, 6, 7, 8]
    # subsample, by hand: (even row, even col) = (0,0) (0,2) (2,0) (2,2); (even, odd) = (0,1) (2,1);
    # (odd, even) = (1,0) (1,2); (odd, odd) = (1,1); raster position = 3 * row + col
    assert O.subsample(3, 3).tolist() == [0, 2, 6, 8, 1, 7, 3, 5, 4]
    # z-curve, by hand: Morton key = bits of (row, col) interleaved, row bit above col bit in each pair:
    # (0,0)=0 (0,1)=1 (1,0)=2 (1,1)=3 (0,2)=4 (1,2)=6 (2,0)=8 (2,1)=9 (2,2)=12; sorted by key
    assert O.z_curve(3, 3).tolist() == [0, 1, 3, 4, 2, 5, 6, 7, 8]
    assert O.z_curve(4, 4).tolist() == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    assert O.subsample(4, 4).tolist() == [0, 2, 8, 10, 1, 3, 9, 11, 4, 6, 12, 14, 5, 7, 13, 15]


def _z_curve_brute(h: int, w: int) -> list[int]:
    """Morton order written independently: interleave the binary digit strings of row and column."""
    n = max(h, w).bit_length()

    def key(r: int, c: int) -> int:
        return int("".join(a + b for a, b in zip(f"{r:0{n}b}", f"{c:0{n}b}")), 2)

    return sorted(range(h * w), key=lambda p: key(p // w, p % w))


def _subsample_brute(h: int, w: int) -> list[int]:
    """The four parity sub-grids one after another, each in raster order, as nested loops."""
    return [r * w + c for pr, pc in ((0, 0), (0, 1), (1, 0), (1, 1)) for r in range(pr, h, 2) for c in range(pc, w, 2)]


@pytest.mark.parametrize("h,w", [(1, 1), (2, 3), (3, 3), (4, 4), (5, 8), (7, 7), (8, 5), (16, 16)])
def test_z_curve_and_subsample_follow_their_definitions(h, w):
    """RAR's Table 3 names these orders; the official code (bytedance/1d-tokenizer) does not build them, so the
    expected orders come from the definitions: Morton order of (row, col), and the 2x2-subsampled grids."""
    assert O.z_curve(h, w).tolist() == _z_curve_brute(h, w)
    assert O.subsample(h, w).tolist() == _subsample_brute(h, w)


def test_unknown_scan_order_is_named():
    with pytest.raises(ValueError, match="diagonal"):
        O.scan_order("diagonal", 4)


def test_a_permutation_and_its_inverse_round_trip():
    g = torch.Generator().manual_seed(0)
    orders = O.random_orders(5, 16, generator=g)
    x = torch.randint(0, 100, (5, 16))
    assert torch.equal(O.unpermute(O.permute(x, orders), orders), x)
    assert torch.equal(O.permute(O.unpermute(x, orders), orders), x)
    inv = O.invert(orders)
    assert torch.equal(orders.gather(1, inv), torch.arange(16).expand(5, -1))
    feats = torch.randn(5, 16, 3)
    assert torch.equal(O.unpermute(O.permute(feats, orders), orders), feats)


def test_permute_puts_tokens_in_generation_order():
    x = torch.tensor([[10, 11, 12, 13]])
    order = torch.tensor([[2, 0, 3, 1]])
    assert O.permute(x, order).tolist() == [[12, 10, 13, 11]]


def test_training_orders_follow_r():
    base = O.raster(4, 4)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(O.training_orders(64, base, 0.0, g), base.expand(64, -1))
    random = O.training_orders(256, base, 1.0, g)
    assert O.is_permutation(random)
    assert (random != base).any(dim=1).float().mean() > 0.99
    half = O.training_orders(2000, base, 0.5, g)
    frac = (half != base).any(dim=1).float().mean().item()
    assert 0.45 < frac < 0.55
