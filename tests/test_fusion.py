"""Fusion modules (joint representations) against their formulas, in float64, in value and gradient."""

from __future__ import annotations

import io

import pytest
import torch

import harness
from harness.errors import UnknownComponentError
from harness_plugins.fusion import MCB, MLB, Bilinear, Concat, Mutan, Product, Sum
from harness_plugins.fusion.compact import count_sketch, signed_sqrt

NAMES = ["concat", "sum", "product", "bilinear", "mlb", "mutan", "mcb"]
SMALL = {"concat": {}, "sum": {"dim": 6}, "product": {"dim": 6}, "bilinear": {"dim": 3},
         "mlb": {"dim": 5, "out": 4}, "mutan": {"dim": 4, "rank": 3, "hidden": 5}, "mcb": {"dim": 16}}
OUT = {"concat": 5 + 7, "sum": 6, "product": 6, "bilinear": 3, "mlb": 4, "mutan": 4, "mcb": 16}


def inputs(b=4, x_dim=5, y_dim=7, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, x_dim, generator=g, dtype=dtype), torch.randn(b, y_dim, generator=g, dtype=dtype)


def fusion(name, **params):
    torch.manual_seed(0)
    return harness.create("fusion", name, x_dim=5, y_dim=7, **{**SMALL[name], **params}).double()


@pytest.mark.parametrize("name", NAMES)
def test_every_fusion_maps_two_batches_to_one_of_its_output_size(name):
    f = fusion(name)
    x, y = inputs()
    z = f(x, y)
    assert z.shape == (4, OUT[name]) and f.output_dim == OUT[name]
    assert torch.isfinite(z).all()
    # embed each side once, combine per pair: the same as the fused batch
    torch.testing.assert_close(f.combine(f.embed_x(x), f.embed_y(y)), z)


def test_created_from_python_with_the_context_sizes_explicit():
    mcb = harness.create("fusion", "mcb", x_dim=2048, y_dim=2048, dim=16000)
    assert isinstance(mcb, MCB) and mcb.output_dim == 16000 and mcb.hash_x.shape == (2048,)
    assert harness.create("fusion", "mlb", x_dim=3, y_dim=4).output_dim == 1200  # the paper's rank
    with pytest.raises(ValueError, match="x_dim"):
        harness.create("fusion", "concat", y_dim=3)
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        harness.create("fusion", "sum", x_dim=3, y_dim=3, dim=0)
    with pytest.raises(ValueError, match="activation must be one of"):
        harness.create("fusion", "mlb", x_dim=3, y_dim=3, activation="sigmoid")
    with pytest.raises(UnknownComponentError, match="did you mean 'rank'"):
        harness.create("fusion", "mutan", x_dim=3, y_dim=3, rnak=2)
    with pytest.raises(ValueError, match=r"fuses x \[B, 5\] with y \[B, 7\]"):
        fusion("concat")(*inputs(x_dim=6))


def test_concat_sum_and_product_formulas():
    x, y = inputs()
    torch.testing.assert_close(fusion("concat")(x, y), torch.cat([x, y], 1))
    s = fusion("sum")
    torch.testing.assert_close(s(x, y), x @ s.proj_x.weight.T + s.proj_x.bias + y @ s.proj_y.weight.T)
    p = fusion("product")
    torch.testing.assert_close(p(x, y), (x @ p.proj_x.weight.T + p.proj_x.bias)
                               * (y @ p.proj_y.weight.T + p.proj_y.bias))


def test_bilinear_equals_an_explicit_einsum():
    f = fusion("bilinear")
    x, y = inputs()
    W, b = f.bilinear.weight, f.bilinear.bias  # [dim, x_dim, y_dim], [dim]
    assert W.shape == (3, 5, 7)
    torch.testing.assert_close(f(x, y), torch.einsum("bi,kij,bj->bk", x, W, y) + b)


def test_mlb_formula_and_its_identity_projection():
    f = fusion("mlb")
    x, y = inputs()
    hadamard = torch.tanh(x @ f.U.weight.T + f.U.bias) * torch.tanh(y @ f.V.weight.T + f.V.bias)
    torch.testing.assert_close(f(x, y), hadamard @ f.P.weight.T + f.P.bias)
    plain = fusion("mlb", out=None, activation="none")
    assert plain.P is None and plain.output_dim == 5
    torch.testing.assert_close(plain(x, y), (x @ plain.U.weight.T + plain.U.bias)
                               * (y @ plain.V.weight.T + plain.V.bias))


def test_mutan_is_a_sum_of_rank_one_hadamard_products():
    f = fusion("mutan")  # dim 4, rank 3, hidden 5
    x, y = inputs()
    xt = torch.tanh(x @ f.in_x.weight.T + f.in_x.bias)
    yt = torch.tanh(y @ f.in_y.weight.T + f.in_y.bias)
    expected = 0
    for r in range(3):
        rows = slice(4 * r, 4 * (r + 1))
        expected = expected + (xt @ f.proj_x.weight[rows].T + f.proj_x.bias[rows]) \
            * (yt @ f.proj_y.weight[rows].T + f.proj_y.bias[rows])
    torch.testing.assert_close(f(x, y), expected)


def test_mutan_of_rank_one_is_mlb_hadamard_fusion_with_matching_weights():
    mutan = fusion("mutan", rank=1)
    mlb = MLB(dim=4, activation="none", x_dim=5, y_dim=5).double()  # on MUTAN's x̃, ỹ (size hidden)
    with torch.no_grad():
        mlb.U.weight.copy_(mutan.proj_x.weight), mlb.U.bias.copy_(mutan.proj_x.bias)
        mlb.V.weight.copy_(mutan.proj_y.weight), mlb.V.bias.copy_(mutan.proj_y.bias)
    x, y = inputs()
    xt, yt = torch.tanh(mutan.in_x(x)), torch.tanh(mutan.in_y(y))
    torch.testing.assert_close(mutan(x, y), mlb(xt, yt), rtol=0, atol=1e-12)


# --- compact bilinear pooling ----------------------------------------------------------------------


def test_mcb_approximates_the_outer_products_inner_products():
    """⟨Φ(x, y), Φ(z, w)⟩ / (⟨x, z⟩⟨y, w⟩) ≈ 1 for non-negative 2,048-d inputs and d = 16,000."""
    g = torch.Generator().manual_seed(0)
    x, y, z, w = torch.rand(4, 8, 2048, generator=g, dtype=torch.float64)
    mcb = MCB(dim=16000, normalize=False, x_dim=2048, y_dim=2048).double()
    ratio = (mcb(x, y) * mcb(z, w)).sum(1) / ((x * z).sum(1) * (y * w).sum(1))
    assert round(float(ratio.mean()), 1) == 1.0
    assert ((ratio - 1).abs() < 0.15).all(), ratio  # each pair; the sketch's relative std is ~0.03 here


def test_mcb_is_the_count_sketch_of_the_outer_product():
    """Φ(x, y) = Ψ(x ⊗ y) with hash h_x(i) + h_y(j) mod d and sign s_x(i) s_y(j): the complex product
    of the spectra (not an element-wise product of real and imaginary parts)."""
    mcb = MCB(dim=11, normalize=False, seed=3, x_dim=5, y_dim=7).double()
    x, y = inputs()
    outer = (x[:, :, None] * y[:, None, :]).flatten(1)  # [B, 35]
    h = ((mcb.hash_x[:, None] + mcb.hash_y[None, :]) % 11).flatten()
    s = (mcb.sign_x[:, None] * mcb.sign_y[None, :]).flatten()
    torch.testing.assert_close(mcb(x, y), count_sketch(outer, h, s, 11))
    # the same thing written as a circular convolution of the two sketches
    px, py = count_sketch(x, mcb.hash_x, mcb.sign_x, 11), count_sketch(y, mcb.hash_y, mcb.sign_y, 11)
    conv = torch.stack([sum(px[:, i] * py[:, (k - i) % 11] for i in range(11)) for k in range(11)], 1)
    torch.testing.assert_close(mcb(x, y), conv)


def test_count_sketch_is_linear_and_a_signed_bucket_sum():
    g = torch.Generator().manual_seed(1)
    h, s = torch.randint(6, (9,), generator=g), torch.randint(2, (9,), generator=g).double() * 2 - 1
    x, z = torch.randn(2, 3, 9, generator=g, dtype=torch.float64)
    matrix = torch.zeros(9, 6, dtype=torch.float64)
    matrix[torch.arange(9), h] = s
    torch.testing.assert_close(count_sketch(x, h, s, 6), x @ matrix)
    torch.testing.assert_close(count_sketch(2 * x - 3 * z, h, s, 6),
                               2 * count_sketch(x, h, s, 6) - 3 * count_sketch(z, h, s, 6))
    mcb = MCB(dim=16, normalize=False, x_dim=5, y_dim=7).double()  # Φ is bilinear
    (a, b), (c, _) = inputs(), inputs(seed=1)
    torch.testing.assert_close(mcb(2 * a - c, b), 2 * mcb(a, b) - mcb(c, b))


def test_mcb_normalizes_with_a_signed_square_root():
    raw = MCB(dim=16, normalize=False, x_dim=5, y_dim=7).double()
    mcb = MCB(dim=16, x_dim=5, y_dim=7).double()
    x, y = inputs()
    phi = raw(x, y)
    root = torch.sign(phi) * (torch.sqrt(phi.abs() + 1e-6) - 1e-3)
    torch.testing.assert_close(mcb(x, y), root / root.norm(dim=1, keepdim=True))
    assert torch.allclose(mcb(x, y).norm(dim=1), torch.ones(4, dtype=torch.float64))
    # the ε keeps the gradient finite where the plain signed square root's is infinite (at 0)
    z = torch.tensor([0.0, 1e-30, -1e-30, 4.0], dtype=torch.float64, requires_grad=True)
    signed_sqrt(z, 1e-6).sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.max() <= 0.5 / 1e-3 + 1e-9
    assert abs(float(signed_sqrt(z.detach(), 1e-12)[3]) - 2.0) < 2e-6  # √4, up to √ε


def test_mcb_hashes_are_buffers_saved_and_identical_after_a_reload():
    torch.manual_seed(123)  # the global stream does not decide the hashes; the seed does
    a = MCB(dim=64, seed=5, x_dim=5, y_dim=7)
    torch.manual_seed(456)
    b = MCB(dim=64, seed=5, x_dim=5, y_dim=7)
    assert torch.equal(a.hash_x, b.hash_x) and torch.equal(a.sign_y, b.sign_y)
    state = a.state_dict()
    assert set(state) == {"hash_x", "sign_x", "hash_y", "sign_y"}
    assert not list(a.parameters())  # fixed, not learned
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    other = MCB(dim=64, seed=6, x_dim=5, y_dim=7)  # different draws until the state is loaded
    x, y = inputs(dtype=torch.float32)
    assert not torch.allclose(other(x, y), a(x, y))
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(other.hash_x, a.hash_x) and torch.equal(other.sign_y, a.sign_y)
    torch.testing.assert_close(other(x, y), a(x, y), rtol=0, atol=0)


def test_mcb_runs_in_float32_under_bf16_autocast():
    mcb = MCB(dim=64, x_dim=5, y_dim=7)
    x, y = inputs(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = mcb(x.bfloat16(), y.bfloat16())
    assert z.dtype == torch.float32
    torch.testing.assert_close(z, mcb(x.bfloat16().float(), y.bfloat16().float()))


# --- gradients ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, params", [(n, {}) for n in NAMES] + [("mcb", {"normalize": False})])
def test_gradcheck_in_float64(name, params):
    f = fusion(name, **params)
    x, y = inputs(b=3)
    x.requires_grad_(True), y.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: f(a, b), (x, y))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_both_inputs_and_every_parameter(name):
    f = fusion(name)
    x, y = inputs()
    x.requires_grad_(True), y.requires_grad_(True)
    (f(x, y) * torch.randn(4, OUT[name], dtype=torch.float64)).sum().backward()
    assert x.grad.abs().sum() > 0 and y.grad.abs().sum() > 0
    for pname, p in f.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_parameter_counts_follow_the_formulas():
    count = {n: sum(p.numel() for p in fusion(n).parameters()) for n in NAMES}
    assert count["concat"] == 0 and count["mcb"] == 0
    assert count["sum"] == 5 * 6 + 6 + 7 * 6 and count["product"] == 5 * 6 + 7 * 6 + 12
    assert count["bilinear"] == 5 * 7 * 3 + 3  # every pair of elements, per output
    assert count["mlb"] == (5 + 1) * 5 + (7 + 1) * 5 + (5 + 1) * 4
    assert count["mutan"] == (5 + 1) * 5 + (7 + 1) * 5 + 2 * (5 + 1) * 3 * 4


def test_the_classes_are_the_registered_factories():
    registered = {n: harness.create("fusion", n, x_dim=2, y_dim=2, **({"dim": 4} if n != "concat" else {}))
                  for n in NAMES}
    assert {n: type(f) for n, f in registered.items()} == {
        "concat": Concat, "sum": Sum, "product": Product, "bilinear": Bilinear, "mlb": MLB,
        "mutan": Mutan, "mcb": MCB}
