"""Fig. 5 of Libra R-CNN: gradient and loss of the balanced L1 loss against smooth L1.

    python -m libra_rcnn.analysis.balanced_l1_curves --out fig5.png [--config-file CONFIG]
        [--max-x 3] [--alphas 0.2 0.3] [KEY VALUE ...]

Draws |dL/dx| (left) and L (right) against the regression error |x| (box-delta units) for
the balanced L1 loss with the config's ``MODEL.LIBRA.BALANCED_L1.{ALPHA, GAMMA, BETA,
VARIANT}`` (docs/methods.md#balanced-l1-loss), the same loss with further alphas (gamma kept, as in the paper's
figure), and smooth L1 with the config's ``MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA`` and with
beta = 1 (the paper's reference). The loss panel marks L = 1, the boundary between inliers
and outliers (Libra R-CNN §3.3), and where each curve crosses it. Without ``--config-file``
the defaults of Detectron2 and :func:`add_libra_config` are used.
"""
import argparse
import os
import sys
from dataclasses import replace
from typing import List, Optional, Sequence

import torch

from detectron2.config import get_cfg

from ..config import EXIT_BAD_INPUT, InputError, add_libra_config, build_config, config_keys
from ..modeling.balanced_l1 import BalancedL1Options
from ..modeling.imbalance import INLIER_LOSS, box_reg_loss_and_grad
from . import save_figure

__all__ = ["curves", "draw_balanced_l1_curves", "main"]

PROG = "python -m libra_rcnn.analysis.balanced_l1_curves"


def curves(
    options: BalancedL1Options,
    smooth_l1_betas: Sequence[float],
    alphas: Sequence[float] = (),
    max_x: float = 3.0,
    steps: int = 600,
):
    """Loss and |gradient| curves on a grid of |x| in [0, max_x].

    Args:
        options: the balanced L1 parameters of the main curve.
        smooth_l1_betas: betas of the smooth L1 curves (0 = L1).
        alphas: further balanced L1 curves with these alphas and ``options``' gamma, beta and
            variant.
        max_x: end of the grid, box-delta units.
        steps: grid points, in (0, max_x].

    Returns:
        (x, rows): x float64 (steps,), and per curve a tuple (label, loss (steps,),
        grad (steps,), |x| where the loss first reaches 1 or None).
    """
    # The grid starts one step after 0, where L1's gradient is undefined.
    x = torch.linspace(0.0, max_x, steps + 1, dtype=torch.float64)[1:]
    specs = [("balanced_l1", options)] + [("balanced_l1", replace(options, alpha=a)) for a in alphas]
    specs += [("smooth_l1", beta) for beta in smooth_l1_betas]
    rows = []
    for loss_type, param in specs:
        if loss_type == "balanced_l1":
            loss, grad = box_reg_loss_and_grad(x, loss_type, balanced_l1=param)
            label = f"balanced L1 (alpha {param.alpha:g}, gamma {param.gamma:g}, beta {param.beta:g}, {param.variant})"
        else:
            loss, grad = box_reg_loss_and_grad(x, loss_type, smooth_l1_beta=param)
            label = f"smooth L1 (beta {param:g})" if param >= 1e-5 else "L1 (smooth L1, beta 0)"
        reached = torch.nonzero(loss >= INLIER_LOSS)
        crossing = float(x[reached[0, 0]]) if len(reached) else None
        rows.append((label, loss, grad, crossing))
    return x, rows


def draw_balanced_l1_curves(
    options: BalancedL1Options,
    smooth_l1_betas: Sequence[float],
    output: str,
    alphas: Sequence[float] = (),
    max_x: float = 3.0,
    title: str = "",
) -> str:
    """Draw :func:`curves` into a two-panel PNG at ``output`` and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, rows = curves(options, smooth_l1_betas, alphas, max_x)
    fig, (ax_grad, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, loss, grad, crossing) in enumerate(rows):
        style = dict(color=colors[i % len(colors)], lw=2.4 if i == 0 else 1.4, ls="-" if i == 0 else "--")
        if "smooth" in label or label.startswith("L1"):
            style["ls"] = ":"
            style["lw"] = 2.0
        ax_grad.plot(x, grad, label=label, **style)
        ax_loss.plot(x, loss, label=label, **style)
        if crossing is not None:
            ax_loss.axvline(crossing, color=style["color"], lw=0.8, ls=style["ls"], alpha=0.7)
    ax_loss.axhline(INLIER_LOSS, color="black", lw=0.8)
    ax_loss.text(0.02 * max_x, INLIER_LOSS * 1.03, "L = 1: inliers below, outliers above", fontsize=8, va="bottom")
    xlabel = "regression error |x| (box-delta units)"
    ax_grad.set(xlabel=xlabel, ylabel="|dL/dx|", title="(a) gradient", xlim=(0, max_x))
    ax_loss.set(xlabel=xlabel, ylabel="L", title="(b) loss", xlim=(0, max_x))
    ax_grad.set_ylim(bottom=0)
    ax_loss.set_ylim(0, max(float(r[1].max()) for r in rows) * 1.02)
    for ax in (ax_grad, ax_loss):
        ax.grid(alpha=0.3)
    ax_grad.legend(fontsize=8, loc="lower right")
    fig.suptitle(title or "Balanced L1 vs. smooth L1 (Libra R-CNN Fig. 5)")
    return save_figure(fig, output)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Draw balanced L1 vs smooth L1 gradient and loss curves (Fig. 5).")
    parser.add_argument("--config-file", default="", help="config whose balanced L1 keys are drawn (its head's: "
                        "MODEL.LIBRA.BALANCED_L1, or MODEL.LIBRA.RETINANET.BALANCED_L1 for Libra RetinaNet)")
    parser.add_argument("--out", required=True, help="PNG path")
    parser.add_argument("--max-x", type=float, default=3.0, help="end of the |x| axis (default 3)")
    parser.add_argument("--alphas", type=float, nargs="*", default=[0.2, 0.3], help="further alphas to draw")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    try:
        if args.config_file:
            cfg = build_config(args)
        else:  # the defaults and the overrides
            cfg = get_cfg()
            add_libra_config(cfg)
            cfg.merge_from_list(args.opts)
        if cfg.MODEL.META_ARCHITECTURE in ("LibraRetinaNet", "FSAF"):
            options = BalancedL1Options.from_config(cfg.MODEL.LIBRA.RETINANET.BALANCED_L1, "MODEL.LIBRA.RETINANET.BALANCED_L1")
        else:
            options = BalancedL1Options.from_config(cfg.MODEL.LIBRA.BALANCED_L1, "MODEL.LIBRA.BALANCED_L1")
        if not args.max_x > 0:
            raise ValueError(f"--max-x = {args.max_x} must be positive")
        with config_keys(alpha="--alphas"):
            for a in args.alphas:
                replace(options, alpha=a)  # checks the value
    except (InputError, KeyError, ValueError, AssertionError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    betas = [cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA] + ([1.0] if cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA != 1.0 else [])
    x, rows = curves(options, betas, args.alphas, args.max_x)
    half = int(torch.argmin((x - 0.5).abs()))  # the grid point nearest |x| = 0.5
    for label, loss, grad, crossing in rows:
        where = f"|x| = {crossing:.3f}" if crossing is not None else f"beyond {args.max_x:g}"
        print(f"{label}: loss reaches 1 at {where}; gradient at |x| = {float(x[half]):g}: {float(grad[half]):.3f}")
    name = os.path.splitext(os.path.basename(args.config_file))[0] if args.config_file else "defaults"
    title = f"Balanced L1 vs. smooth L1 (Libra R-CNN Fig. 5), {name}"
    print(draw_balanced_l1_curves(options, betas, args.out, args.alphas, args.max_x, title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
