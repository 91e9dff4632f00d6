"""herd's decode kernels against plain torch references: the weight formats, the activation rounding of the
int8/int4 dot products, the small elementwise ops, and the torch fallback used where the build fails."""

import pytest
import torch

from herd.errors import CheckpointError
from herd.formats.packed import GROUP, PackedWeight, pack_int4, quantize, unpack_int4
from herd.inference import kernels
from herd.inference.quantize import KERNEL_MAX_ROWS, InferenceLinear, TiledWeight, _native_bf16


@pytest.fixture(scope="module", autouse=True)
def _built() -> None:
    assert kernels.available(), "the C++ kernels must build on the test machines (gcc + ninja)"


def _reference_int(x: torch.Tensor, p: PackedWeight) -> torch.Tensor:
    """What the int8/int4 kernels compute: x rounded to int8 per group of 32 (scale max|x| / 127), exact
    integer dot products with the weight values, then the float16 scales (and mins)."""
    M, K = x.shape
    g = x.view(M, K // GROUP, GROUP)
    d = g.abs().amax(-1) / 127
    xq = torch.where(d[..., None] > 0, g * (127 / g.abs().amax(-1, keepdim=True)), 0).round().clamp(-127, 127)
    xq = xq.double()
    if p.kind == "int8":
        q = p.qweight.double().view(p.shape[0], K // GROUP, GROUP)
    else:
        q = unpack_int4(p.qweight, K).double().view(p.shape[0], K // GROUP, GROUP)
    dots = torch.einsum("mgj,ngj->mng", xq, q)
    y = (dots * d.double()[:, None] * p.scales.double()[None]).sum(-1)
    if p.mins is not None:
        y += (xq.sum(-1) * d.double())[:, None, :].mul(p.mins.double()[None]).sum(-1)
    return y.float()


def _layouts() -> list:
    tiled = pytest.param("tiled", marks=pytest.mark.skipif(not kernels.tile_kernels(), reason="no AVX512-VNNI"))
    return ["packed", tiled]


@pytest.mark.parametrize("layout", _layouts())
@pytest.mark.parametrize("kind", ["int8", "int4"])
@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 9])
# K = 3 groups; 18 (two blocks of 8 groups and 2 more, as SmolLM2's 576); 16 (whole blocks); 25 (an odd tail)
@pytest.mark.parametrize("K", [96, 576, 512, 800])
def test_int_kernels_equal_the_exact_integer_reference(layout, kind, M, K) -> None:
    w = torch.randn(208, K)  # 13 tiles of 16 rows: not a multiple of any thread split
    p = quantize(w, kind)
    q = TiledWeight.from_packed(p) if layout == "tiled" else p
    x = torch.randn(M, K) * 3
    y = (
        kernels.linear_int8(x, q.qweight, q.scales)
        if kind == "int8"
        else kernels.linear_int4(x, q.qweight, q.scales, q.mins)
    )
    ref = _reference_int(x, p)
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-4), (y - ref).abs().max()
    # ... and the rounding of x moves the result by about as much as int8 weights do, not more.
    exact = x @ p.dequantize().T
    assert ((y - exact).norm() / exact.norm()) < 0.02


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_tiled_layout_holds_the_packed_bytes_in_the_documented_order(kind) -> None:
    p = quantize(torch.randn(48, 96), kind)
    t = TiledWeight.from_packed(p)
    # tiles.h: byte 64c + 4r + b of tile t, group g = packed byte 4c + b of row 16t + r's group g (int8: + 128)
    q = p.qweight.view(torch.uint8).int()
    per_group = 32 if kind == "int8" else 16
    spots = [(0, 0, 0, 0, 0), (1, 2, 1, 5, 3), (2, 1, 3, 15, 2)] + ([(2, 2, 7, 9, 1)] if kind == "int8" else [])
    for tile, g, c, r, b in spots:
        want = q[16 * tile + r, per_group * g + 4 * c + b]
        want = (want + 128) % 256 if kind == "int8" else want
        assert t.qweight[tile, g, 64 * c + 4 * r + b] == want
    assert t.scales[1, 2, 5] == p.scales[21, 2]
    back = t.to_packed()
    assert torch.equal(back.qweight, p.qweight) and torch.equal(back.scales, p.scales)
    assert back.mins is None if kind == "int8" else torch.equal(back.mins, p.mins)
    index = torch.tensor([[47, 0, 16], [5, 5, 31]])
    assert torch.equal(t.rows(index), p.rows(index))
    assert t.nbytes == p.nbytes
    if kernels.tile_kernels():
        got = kernels.dequantize_rows(t.qweight, t.scales, t.mins, 13, 40)
        assert torch.equal(got, kernels.dequantize_rows(p.qweight, p.scales, p.mins, 13, 40))
        assert torch.equal(got, p.dequantize()[13:40])


def test_swiglu_stays_within_4_ulp_of_float64_over_a_wide_range() -> None:
    """The kernels' vectorized exp (SwiGLU, the attention softmax) against float64, in ulps of the result."""
    g = torch.linspace(-80, 80, 200_001)
    y = kernels.silu_mul(torch.cat([g, torch.full_like(g, 1.5)])[None])[0].double()
    ref = (g.double() / (1 + torch.exp(-g.double())) * 1.5).float()
    ulp = (ref.nextafter(torch.tensor(float("inf"))) - ref).double().abs()
    assert ((y - ref.double()).abs() / ulp).max() <= 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M,K", [(1, 576), (3, 40), (4, 37), (7, 96)])
def test_dense_kernel_equals_matmul(dtype, M, K) -> None:
    w = torch.randn(130, K).to(dtype)
    x = torch.randn(M, K)
    # The AVX512-BF16 build multiplies bfloat16 weights by x rounded to bfloat16 (dpbf16ps), exactly otherwise.
    xr = x.bfloat16() if dtype == torch.bfloat16 and kernels.bf16_activations() else x
    ref = xr.double() @ w.double().T
    assert torch.allclose(kernels.linear_dense(x, w).double(), ref, rtol=1e-4, atol=1e-4)


def test_quantize_round_trips_within_half_a_step_and_packs_nibbles_in_gguf_order() -> None:
    w = torch.randn(8, 64)
    for kind, steps in (("int8", 127), ("int4", 7.5)):
        p = quantize(w, kind)
        err = (p.dequantize() - w).abs().view(8, 2, GROUP).amax(-1)
        span = w.view(8, 2, GROUP).abs().amax(-1)
        assert (err <= span / steps * 0.51 + 1e-3).all()
    q = torch.arange(32).remainder(16).repeat(2, 2)  # (2, 64)
    packed = pack_int4(q)
    assert packed[0, 0] == (0 | (0 << 4)) and packed[0, 1] == (1 | (1 << 4))  # value j low, value j + 16 high
    assert torch.equal(unpack_int4(packed, 64), q.to(torch.uint8))


def test_packed_weight_rejects_bad_shapes_with_the_shape_in_the_message() -> None:
    with pytest.raises(CheckpointError, match=r"40 inputs is not a multiple of 32"):
        PackedWeight("int8", (4, 40), torch.zeros(4, 40, dtype=torch.int8), torch.zeros(4, 1, dtype=torch.float16))
    with pytest.raises(CheckpointError, match=r"qweight is torch.int8 \[4, 32\], expected torch.uint8 \[4, 16\]"):
        PackedWeight("int4", (4, 32), torch.zeros(4, 32, dtype=torch.int8), torch.zeros(4, 1, dtype=torch.float16))


def test_elementwise_kernels_equal_torch() -> None:
    x, w = torch.randn(2, 3, 64), torch.randn(64)
    assert torch.allclose(kernels.rms_norm(x, w, 1e-5), torch.nn.functional.rms_norm(x, (64,), w, 1e-5), atol=1e-6)
    gu = torch.randn(2, 3, 40)
    ref = torch.nn.functional.silu(gu[..., :20]) * gu[..., 20:]
    assert torch.allclose(kernels.silu_mul(gu), ref, atol=1e-6)
    qkv, angles = torch.randn(2, 3, 5 * 8), torch.randn(2, 3, 4)
    rotated = qkv.clone()
    kernels.rope_(rotated, angles.cos(), angles.sin(), 4)
    pairs = torch.view_as_complex(qkv[..., :32].reshape(2, 3, 4, 4, 2))
    ref = torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)[:, :, None]).reshape(2, 3, 32)
    assert torch.allclose(rotated[..., :32], ref, atol=1e-6)
    assert torch.equal(rotated[..., 32:], qkv[..., 32:])  # the v head is left alone


def test_torch_fallback_computes_the_same_products(monkeypatch) -> None:
    w = torch.randn(64, 64)
    x = torch.randn(2, 64)
    compiled = {k: InferenceLinear(quantize(w, k) if k != "none" else w)(x) for k in ("none", "int8", "int4")}
    monkeypatch.setattr(kernels, "available", lambda: False)
    for kind, y in compiled.items():
        lin = InferenceLinear(quantize(w, kind) if kind != "none" else w)
        # The fallback multiplies by the dequantized weights without rounding x.
        assert torch.allclose(lin(x), y, rtol=0.03, atol=0.05 * y.abs().max().item())


@pytest.mark.parametrize("kind", ["none-bf16", "int8", "int4"])
@pytest.mark.parametrize("rows", [300, 320])  # 320 rows are tiled where the tile kernels are built
def test_large_batches_take_the_chunked_gemm_path_and_agree_with_the_kernel(kind, rows, monkeypatch) -> None:
    w = torch.randn(rows, 64)
    weight = w.bfloat16() if kind == "none-bf16" else quantize(w, kind)
    lin = InferenceLinear(weight)
    x = torch.randn(KERNEL_MAX_ROWS + 5, 64)
    monkeypatch.setattr("herd.inference.quantize._CHUNK_ELEMENTS", 64 * 70)  # several row chunks
    big = lin(x)
    exact = x @ (weight.float() if isinstance(weight, torch.Tensor) else weight.dequantize()).T
    if kind == "none-bf16" and _native_bf16():  # oneDNN's bf16 GEMM: x and the product rounded to bfloat16
        assert torch.equal(big, torch.nn.functional.linear(x.bfloat16(), weight).float())
        assert ((big - exact).norm() / exact.norm()) < 1e-2
    elif _native_bf16():  # packed weights: each row chunk dequantized, rounded to bfloat16, oneDNN's bf16 GEMM
        assert not isinstance(weight, torch.Tensor)
        chunks = [weight.dequantize()[n : n + 70].bfloat16() for n in range(0, rows, 70)]
        expected = torch.cat([torch.nn.functional.linear(x.bfloat16(), c).float() for c in chunks], dim=-1)
        assert torch.equal(big, expected)
        assert ((big - exact).norm() / exact.norm()) < 1e-2
    else:
        assert torch.allclose(big, exact, rtol=1e-4, atol=1e-4)
    small = torch.cat([lin(x[i : i + 1]) for i in range(x.shape[0])])
    assert ((small - big).norm() / big.norm()) < 0.02
