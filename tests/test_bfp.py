"""Balanced feature pyramid (docs/methods.md#balanced-feature-pyramid): shapes, the residual by hand,
gradients, config checks."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone, build_backbone

from libra_rcnn import BalancedFeaturePyramid, NonLocalBlock2d

from conftest import FixedPyramid, load_cfg


def small_levels(seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = {"p2": 8, "p3": 4, "p4": 2}
    return {k: torch.randn(2, 3, s, s, generator=g, dtype=torch.float64) for k, s in sizes.items()}


def block_max(a, k):
    """Max over k x k blocks of (..., H, W), in NumPy."""
    *lead, h, w = a.shape
    return a.reshape(*lead, h // k, k, w // k, k).max(axis=(-3, -1))


def repeat(a, k):
    """Nearest upsampling by k of (..., H, W), in NumPy."""
    return a.repeat(k, axis=-2).repeat(k, axis=-1)


def test_refine_none_is_the_gather_average_scatter_residual():
    levels = small_levels()
    bfp = BalancedFeaturePyramid(FixedPyramid(levels), refine_level=1, refine_type="none")
    out = bfp(torch.zeros(1))
    p2, p3, p4 = (levels[k].numpy() for k in ("p2", "p3", "p4"))
    # Refine level 1 (4x4): P2 max-pooled by 2, P3 as is, P4 upsampled by 2; then averaged.
    integrated = (block_max(p2, 2) + p3 + repeat(p4, 2)) / 3
    np.testing.assert_allclose(out["p2"].detach().numpy(), p2 + repeat(integrated, 2), rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["p3"].detach().numpy(), p3 + integrated, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["p4"].detach().numpy(), p4 + block_max(integrated, 2), rtol=0, atol=1e-12)


def test_refine_conv_is_a_3x3_conv_then_relu_by_hand():
    # The reference's ConvModule: 3x3 conv (padding 1) + ReLU on the integrated level.
    levels = small_levels(seed=3)
    bfp = BalancedFeaturePyramid(FixedPyramid(levels), refine_level=1, refine_type="conv").double()
    assert [name for name, _ in bfp.refine.named_children()] == ["conv", "relu"]
    out = bfp(torch.zeros(1))
    p2, p3, p4 = (levels[k].numpy() for k in ("p2", "p3", "p4"))
    integrated = (block_max(p2, 2) + p3 + repeat(p4, 2)) / 3  # (2, 3, 4, 4)
    weight = bfp.refine.conv.weight.detach().numpy()  # (3, 3, 3, 3): out, in, kh, kw
    bias = bfp.refine.conv.bias.detach().numpy()
    padded = np.pad(integrated, ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = np.zeros_like(integrated)
    for i in range(4):
        for j in range(4):
            window = padded[:, :, i : i + 3, j : j + 3]  # (2, 3 in, 3, 3)
            conv[:, :, i, j] = np.einsum("bckl,ockl->bo", window, weight) + bias
    refined = np.maximum(conv, 0.0)
    assert (conv < 0).any() and (conv > 0).any()  # the ReLU cuts something off
    np.testing.assert_allclose(out["p2"].detach().numpy(), p2 + repeat(refined, 2), rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["p3"].detach().numpy(), p3 + refined, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["p4"].detach().numpy(), p4 + block_max(refined, 2), rtol=0, atol=1e-12)


def test_refine_level_at_the_finest_and_coarsest():
    levels = small_levels(1)
    p2, p3, p4 = (levels[k].numpy() for k in ("p2", "p3", "p4"))
    out0 = BalancedFeaturePyramid(FixedPyramid(levels), refine_level=0, refine_type="none")(torch.zeros(1))
    integrated0 = (p2 + repeat(p3, 2) + repeat(p4, 4)) / 3
    np.testing.assert_allclose(out0["p4"].detach().numpy(), p4 + block_max(integrated0, 4), atol=1e-12)
    out2 = BalancedFeaturePyramid(FixedPyramid(levels), refine_level=2, refine_type="none")(torch.zeros(1))
    integrated2 = (block_max(p2, 4) + block_max(p3, 2) + p4) / 3
    np.testing.assert_allclose(out2["p2"].detach().numpy(), p2 + repeat(integrated2, 4), atol=1e-12)


@pytest.mark.parametrize("refine_type", ["none", "conv", "non_local"])
def test_gradients_reach_every_level(refine_type):
    levels = {k: v.float().requires_grad_() for k, v in small_levels(2).items()}
    bfp = BalancedFeaturePyramid(FixedPyramid(levels), refine_level=1, refine_type=refine_type)
    out = bfp(torch.zeros(1))
    # Weight each output so that the gradient through the max-pooling is not trivial.
    sum(((o * torch.linspace(0.5, 1.5, o.numel()).view_as(o)) ** 2).sum() for o in out.values()).backward()
    for name, level in levels.items():
        assert level.grad is not None and level.grad.abs().sum() > 0, name
    for name, p in bfp.refine.named_parameters():
        if name.startswith(("out", "weight", "bias")):  # theta / phi get no gradient while W_out is 0
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_non_local_starts_as_identity_and_matches_plain_attention():
    block = NonLocalBlock2d(8).double()
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(block(x), x)
    torch.nn.init.normal_(block.out.weight)
    # The reference's unscaled embedded Gaussian, written with matmul and softmax.
    theta = block.theta(x).flatten(2).transpose(1, 2)
    phi = block.phi(x).flatten(2)
    g = block.g(x).flatten(2).transpose(1, 2)
    y = torch.softmax(theta @ phi, dim=-1) @ g
    plain = x + block.out(y.transpose(1, 2).reshape(x.shape))
    for fused in (True, False):
        torch.testing.assert_close(x + block.out(block.attend(x, fused=fused)), plain, rtol=0, atol=1e-5)
    block32 = block.float()
    torch.testing.assert_close(block32(x.float()), plain.float(), rtol=0, atol=1e-5)


def test_fused_and_plain_non_local_agree_in_value_and_gradient():
    torch.manual_seed(3)
    block = NonLocalBlock2d(16)
    torch.nn.init.normal_(block.out.weight, std=0.1)
    x = torch.randn(2, 16, 7, 9) * 3  # peaked attention: logits of several units
    results = []
    for fused in (True, False):
        xi = x.clone().requires_grad_()
        y = xi + block.out(block.attend(xi, fused=fused))
        grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), [xi, *block.parameters()])
        results.append((y, grads))
    (y_fused, g_fused), (y_plain, g_plain) = results
    torch.testing.assert_close(y_fused, y_plain, rtol=0, atol=1e-5)
    for a, b in zip(g_fused, g_plain):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * max(1.0, float(b.abs().max())))


SIZES = [[(24, 36), (12, 18), (6, 9), (3, 5)], [(18, 12), (6, 4), (3, 2)], [(8, 12), (4, 3), (2, 1)]]


@pytest.mark.parametrize("sizes", SIZES)
def test_bfp_equals_the_generic_rescaling(sizes):
    # Integer ratios take max_pool2d and broadcast additions, others the gathered windows and
    # indices (P5 3x5 <-> 6x9 here); both must equal PyTorch's kernels, value and gradient.
    levels = {f"p{i + 2}": torch.randn(2, 3, h, w, dtype=torch.float64) for i, (h, w) in enumerate(sizes)}
    for level in levels.values():
        level.requires_grad_()
    bfp = BalancedFeaturePyramid(FixedPyramid(levels), refine_level=min(2, len(sizes) - 1), refine_type="conv")
    bfp = bfp.double()
    out = bfp(torch.zeros(1))
    feats = [levels[k] * bfp.fpn.scale for k in levels]
    r, size = bfp.refine_level, feats[bfp.refine_level].shape[-2:]

    def nearest(x, hw):
        return F.interpolate(x, size=hw, mode="nearest")

    gathered = [F.adaptive_max_pool2d(f, size) if i < r else nearest(f, size) for i, f in enumerate(feats)]
    balanced = bfp.refine(torch.stack(gathered).mean(dim=0))
    expected = {
        k: f + (nearest(balanced, f.shape[-2:]) if i < r else F.adaptive_max_pool2d(balanced, f.shape[-2:]))
        for i, (k, f) in enumerate(zip(levels, feats))
    }
    weights = {k: torch.randn_like(v) for k, v in expected.items()}
    inputs = list(levels.values()) + list(bfp.parameters())
    got = torch.autograd.grad(sum((out[k] * weights[k]).sum() for k in out), inputs)
    want = torch.autograd.grad(sum((expected[k] * weights[k]).sum() for k in expected), inputs)
    for k in levels:
        torch.testing.assert_close(out[k], expected[k], rtol=0, atol=1e-12)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("refine_type", ["none", "non_local"])
@pytest.mark.parametrize("sizes", SIZES)
def test_bfp_without_autograd_equals_it_with_autograd(sizes, refine_type):
    # Without autograd the levels are strengthened in place (broadcast over whole rows for integer
    # ratios, F.interpolate otherwise): the same values, bit for bit, and the inputs untouched.
    levels = {f"p{i + 2}": torch.randn(2, 5, h, w) for i, (h, w) in enumerate(sizes)}
    copies = {k: v.clone() for k, v in levels.items()}
    bfp = BalancedFeaturePyramid(FixedPyramid(levels), refine_level=min(2, len(sizes) - 1), refine_type=refine_type)
    if refine_type == "non_local":
        torch.nn.init.normal_(bfp.refine.out.weight)  # not the identity
    with_grad = bfp(torch.zeros(1))
    assert all(v.requires_grad for v in with_grad.values())
    with torch.no_grad():
        without = bfp(torch.zeros(1))
    for k in levels:
        assert torch.equal(without[k], with_grad[k].detach()), k
        assert torch.equal(levels[k], copies[k])


def test_bfp_backbone_from_config_keeps_fpn_outputs():
    cfg = load_cfg("configs/FashionScenes/libra_rcnn_R_18_FPN_GN.yaml", ["MODEL.DEVICE", "cpu"])
    bfp = build_backbone(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    fpn = build_backbone(cfg)
    assert isinstance(bfp, BalancedFeaturePyramid)
    assert bfp.output_shape() == fpn.output_shape()
    assert bfp.size_divisibility == fpn.size_divisibility
    x = torch.randn(1, 3, 128, 96)
    out_bfp, out_fpn = bfp(x), fpn(x)
    assert list(out_bfp) == sorted(out_fpn, key=lambda k: fpn.output_shape()[k].stride)
    for k in out_fpn:
        assert out_bfp[k].shape == out_fpn[k].shape


@pytest.mark.parametrize(
    "key,value",
    [("MODEL.LIBRA.BFP.REFINE_TYPE", "attention"), ("MODEL.LIBRA.BFP.REFINE_LEVEL", 5),
     ("MODEL.LIBRA.BFP.REFINE_LEVEL", -1), ("MODEL.LIBRA.BFP.FPN_BACKBONE", "build_nothing")],
)
def test_bad_bfp_config_names_the_key(key, value):
    cfg = load_cfg("configs/FashionScenes/libra_rcnn_R_18_FPN_GN.yaml", ["MODEL.DEVICE", "cpu", key, value])
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_backbone(cfg)


def test_levels_of_different_channels_are_refused():
    levels = {"p2": torch.zeros(1, 4, 8, 8), "p3": torch.zeros(1, 3, 4, 4)}
    with pytest.raises(ValueError, match="equal channels"):
        BalancedFeaturePyramid(FixedPyramid(levels), refine_level=0)


def test_interpolation_helpers_agree_with_torch():
    # Guards the NumPy helpers above against a silent mismatch with the ops the BFP uses.
    a = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    np.testing.assert_allclose(F.adaptive_max_pool2d(a, 4).numpy(), block_max(a.numpy(), 2))
    np.testing.assert_allclose(F.interpolate(a, size=(16, 16), mode="nearest").numpy(), repeat(a.numpy(), 2))



def test_gathered_rescaling_equals_pytorch_kernels():
    # The gathers that tracing, ONNX export and torch.compile record equal adaptive_max_pool2d and
    # nearest interpolation exactly, for sizes that divide and sizes that do not.
    from libra_rcnn.modeling.resize import gather_max_pool, gather_upsample

    g = torch.Generator().manual_seed(0)
    float_rounding_cases = 0
    for large in range(1, 40):
        for small in range(1, large + 1):
            x = torch.randn(1, 2, large, 3, generator=g)
            pooled = gather_max_pool(x, (small, 2), -(-large // small) + 1)  # windows of ceil(in / out) + 1 at most
            assert torch.equal(pooled, F.adaptive_max_pool2d(x, (small, 2))), (large, small)
            y = torch.randn(1, 2, small, 3, generator=g)
            upsampled = gather_upsample(y, (large, 7))
            assert torch.equal(upsampled, F.interpolate(y, size=(large, 7), mode="nearest")), (large, small)
            integer_floor = y.index_select(2, torch.arange(large) * small // large)
            float_rounding_cases += not torch.equal(upsampled[..., :3], integer_floor)
    # PyTorch's nearest index is floor(i * float32(in / out)), not always i * in // out.
    assert float_rounding_cases > 0


class PooledPyramid(Backbone):
    """A stand-in FPN computed from the input: P2-P6 by average pooling of stride 4-64, rounding
    up as FPN levels do (P6 of a 56 x 88 input is 1 x 2, not a divisor of P4's 4 x 6)."""

    def __init__(self, channels=3):
        super().__init__()
        self.strides = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
        self.mix = torch.nn.Conv2d(3, channels, 1)
        self._out_features = list(self.strides)

    def forward(self, x):
        x = self.mix(x)
        return {k: F.avg_pool2d(x, s, s, ceil_mode=True) for k, s in self.strides.items()}

    def output_shape(self):
        return {k: ShapeSpec(channels=self.mix.out_channels, stride=s) for k, s in self.strides.items()}


class LevelsAsTuple(torch.nn.Module):
    def __init__(self, bfp):
        super().__init__()
        self.bfp = bfp

    def forward(self, x):
        return tuple(self.bfp(x).values())


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("refine_type", ["conv", "non_local"])
def test_traced_and_onnx_bfp_run_at_other_sizes(refine_type, tmp_path):
    # The eager fast paths would bake the traced size's kernels into the graph; the recorded
    # graph must give the eager outputs at sizes whose level ratios differ from the traced one.
    import onnxruntime

    bfp = BalancedFeaturePyramid(PooledPyramid(), refine_level=2, refine_type=refine_type).eval()
    if refine_type == "non_local":
        torch.nn.init.normal_(bfp.refine.out.weight, std=0.1)  # zero at init: the block would be the identity
    model = LevelsAsTuple(bfp).eval()
    traced_input = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(model, (traced_input,))
        torch.onnx.export(
            model, (traced_input,), str(tmp_path / "bfp.onnx"), input_names=["x"],
            dynamic_axes={"x": {2: "h", 3: "w"}}, opset_version=17, dynamo=False,
        )  # fmt: skip
    session = onnxruntime.InferenceSession(str(tmp_path / "bfp.onnx"), providers=["CPUExecutionProvider"])
    for hw in [(64, 64), (56, 88), (100, 36)]:
        x = torch.randn(1, 3, *hw)
        with torch.no_grad():
            eager = model(x)
            for got in (traced(x), session.run(None, {"x": x.numpy()})):
                assert len(got) == len(eager) == 5
                for e, o in zip(eager, got):
                    torch.testing.assert_close(torch.as_tensor(o), e, rtol=0, atol=1e-5)
