"""Balanced L1 loss against docs/methods.md#balanced-l1-loss: values, gradients, continuity, both beta variants."""
import math

import pytest
import torch

from libra_rcnn import balanced_l1_loss

ALPHA, GAMMA = 0.5, 1.5
B = math.exp(GAMMA / ALPHA) - 1.0  # 19.0855...


def scalar_paper(x, beta=1.0, alpha=ALPHA, gamma=GAMMA):
    """Eq. 8 written with Python floats, |x| scaled by 1/beta and the loss by beta."""
    b = math.exp(gamma / alpha) - 1.0
    u = abs(x) / beta
    if u < 1:
        return beta * ((alpha / b) * (b * u + 1) * math.log(b * u + 1) - alpha * u)
    return beta * (gamma * u + gamma / b - alpha)


def scalar_mmdet(x, beta=1.0, alpha=ALPHA, gamma=GAMMA):
    """The reference implementation's formula with Python floats."""
    b = math.exp(gamma / alpha) - 1.0
    d = abs(x)
    if d < beta:
        return (alpha / b) * (b * d + 1) * math.log(b * d / beta + 1) - alpha * d
    return gamma * d + gamma / b - alpha * beta


def loss_and_grad(x, **kwargs):
    x = torch.tensor([x], dtype=torch.float64, requires_grad=True)
    loss = balanced_l1_loss(x, torch.zeros_like(x), **kwargs)
    loss.sum().backward()
    return loss.item(), x.grad.item()


@pytest.mark.parametrize("variant", ["paper", "mmdet"])
def test_check_values_of_methods_md(variant):
    # docs/methods.md#balanced-l1-loss: L(0.5) = 0.400568, L(1) = 1.078594 (beta = 1), and b = 19.0855.
    assert B == pytest.approx(19.0855, abs=1e-4)
    assert loss_and_grad(0.5, variant=variant)[0] == pytest.approx(0.400568, abs=1e-5)
    assert loss_and_grad(1.0, variant=variant)[0] == pytest.approx(1.078594, abs=1e-5)
    assert loss_and_grad(-0.5, variant=variant)[0] == pytest.approx(0.400568, abs=1e-5)
    assert loss_and_grad(0.0, variant=variant)[0] == 0.0


@pytest.mark.parametrize("x", [0.01, 0.1, 0.3, 0.7, 0.99])
def test_inlier_gradient_is_alpha_log(x):
    # Eq. 6: dL/dx = alpha * ln(b|x| + 1) for |x| < 1.
    _, grad = loss_and_grad(x)
    assert grad == pytest.approx(ALPHA * math.log(B * x + 1), rel=1e-9)
    _, grad_neg = loss_and_grad(-x)
    assert grad_neg == pytest.approx(-ALPHA * math.log(B * x + 1), rel=1e-9)


@pytest.mark.parametrize("x", [1.0, 1.5, 4.0])
def test_outlier_gradient_is_gamma(x):
    assert loss_and_grad(x)[1] == pytest.approx(GAMMA, rel=1e-12)


@pytest.mark.parametrize("beta", [1.0, 0.11, 0.5])
def test_paper_variant_is_continuous_in_value_and_gradient(beta):
    eps = 1e-7
    below, grad_below = loss_and_grad(beta - eps, beta=beta)
    above, grad_above = loss_and_grad(beta + eps, beta=beta)
    assert below == pytest.approx(above, abs=1e-6)
    assert grad_below == pytest.approx(grad_above, abs=1e-5)
    assert grad_above == pytest.approx(GAMMA)


def test_mmdet_variant_is_continuous_in_value_with_a_gradient_jump():
    beta, eps = 0.11, 1e-7
    below, grad_below = loss_and_grad(beta - eps, beta=beta, variant="mmdet")
    above, grad_above = loss_and_grad(beta + eps, beta=beta, variant="mmdet")
    assert below == pytest.approx(above, abs=1e-6)
    # docs/methods.md#balanced-l1-loss: 1.70 vs 1.5 at beta = 0.11.
    assert grad_below == pytest.approx(1.70, abs=5e-3)
    assert grad_above == pytest.approx(1.5)


@pytest.mark.parametrize("beta", [0.11, 1.0, 0.5])
@pytest.mark.parametrize("variant,scalar", [("paper", scalar_paper), ("mmdet", scalar_mmdet)])
def test_both_variants_against_scalar_formulas(beta, variant, scalar):
    xs = [-2.0, -0.3, -0.05, 0.0, 0.01, 0.05, 0.1, 0.109, 0.2, 0.7, 1.3]
    got = balanced_l1_loss(torch.tensor(xs, dtype=torch.float64), torch.zeros(len(xs), dtype=torch.float64),
                           beta=beta, variant=variant)
    want = torch.tensor([scalar(x, beta) for x in xs], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_beta_011_hand_values():
    # Hand-computed with b = 19.085537: paper, x = 0.05: u = 0.05 / 0.11 = 0.454545,
    # b u + 1 = 9.675244, ln(.) = 2.269569,
    # L = 0.11 * (0.026198 * 9.675244 * 2.269569 - 0.227273) = 0.11 * 0.347992 = 0.0382791.
    assert loss_and_grad(0.05, beta=0.11)[0] == pytest.approx(0.0382791, abs=1e-5)
    # Outlier, x = 0.5: 0.11 * (1.5 * 4.545455 + 1.5 / b - 0.5) = 0.7005...
    assert loss_and_grad(0.5, beta=0.11)[0] == pytest.approx(0.11 * (1.5 * 0.5 / 0.11 + 1.5 / B - 0.5), abs=1e-9)
    # mmdet, x = 0.05: b x + 1 = 1.954277, ln(b x / 0.11 + 1) = 2.269569,
    # L = 0.026198 * 1.954277 * 2.269569 - 0.025 = 0.091197.
    assert loss_and_grad(0.05, beta=0.11, variant="mmdet")[0] == pytest.approx(0.091197, abs=1e-5)


def test_reduction_and_weight():
    inp = torch.tensor([[0.2, -1.5], [0.0, 0.6]])
    tgt = torch.tensor([[0.1, 0.5], [0.3, 0.6]])
    elementwise = balanced_l1_loss(inp, tgt)
    assert elementwise.shape == inp.shape
    want = torch.tensor([[scalar_paper(0.1), scalar_paper(2.0)], [scalar_paper(0.3), 0.0]])
    torch.testing.assert_close(elementwise, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(balanced_l1_loss(inp, tgt, reduction="sum"), want.sum())
    torch.testing.assert_close(balanced_l1_loss(inp, tgt, reduction="mean"), want.mean())
    weight = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    torch.testing.assert_close(balanced_l1_loss(inp, tgt, reduction="sum", weight=weight), (want * weight).sum())
    assert balanced_l1_loss(torch.zeros(0, 4), torch.zeros(0, 4), reduction="mean").item() == 0.0


@pytest.mark.parametrize(
    "kwargs,match",
    [({"alpha": 0.0}, "alpha"), ({"gamma": -1.0}, "gamma"), ({"beta": 0.0}, "beta"),
     ({"variant": "x"}, "variant"), ({"reduction": "max"}, "reduction")],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        balanced_l1_loss(torch.zeros(2), torch.zeros(2), **kwargs)
