"""Commands that draw the imbalances of Libra R-CNN (docs/methods.md#the-three-imbalances) as PNG files.

- ``python -m libra_rcnn.analysis.iou_histograms``: Fig. 3, IoU histograms of random,
  IoU-balanced and hard negatives for a config and its weights over a dataset split;
- ``python -m libra_rcnn.analysis.balanced_l1_curves``: Fig. 5, gradient and loss of the
  balanced L1 loss against smooth L1;
- ``python -m libra_rcnn.analysis.training_stats``: the sampling statistics and gradient
  shares that training wrote to ``metrics.json``, over the iterations of one or more runs.
- ``python -m libra_rcnn.analysis.inlier_gradients``: Fig. 5 on trained models, the inliers'
  share of the box gradient under smooth L1 and balanced L1 on the same RoIs, one inlier rule.

The statistics themselves are computed by :mod:`libra_rcnn.modeling.imbalance`.
"""
import os

from detectron2.data import DatasetMapper, build_detection_test_loader

__all__ = ["save_figure", "annotated_loader"]


def save_figure(fig, path: str, dpi: int = 110) -> str:
    """Lay out a matplotlib figure, save it as ``path`` (folders made as needed), close it.

    Returns:
        ``path``.
    """
    import matplotlib.pyplot as plt

    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def annotated_loader(cfg, dataset_dicts):
    """Detectron2's test loader over ``dataset_dicts``, one image per batch in order, resized
    as at test time (``INPUT.MIN/MAX_SIZE_TEST``, no flip) but keeping the annotations as
    ``instances``, which the analyses need to label proposals as training does."""
    kwargs = DatasetMapper.from_config(cfg, is_train=False)
    kwargs["is_train"] = True  # keep the annotations
    return build_detection_test_loader(dataset=list(dataset_dicts), mapper=DatasetMapper(**kwargs))
