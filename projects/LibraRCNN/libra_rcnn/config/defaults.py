"""The project's config node ``MODEL.LIBRA``, with every key at its default.

Every key the project adds lives under ``cfg.MODEL.LIBRA`` and is created, with its
default, by :func:`add_libra_config`. Each component checks the keys it reads when it is
built (``from_config``), so a wrong value fails before training starts with an error that
names the key, the value and what is allowed (:mod:`libra_rcnn.config.checks`).
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_libra_config"]

REFINE_TYPES = ("none", "conv", "non_local")
POS_SAMPLERS = ("instance_balanced", "random")
NEG_SAMPLERS = ("iou_balanced", "random")
BINNINGS = ("paper", "mmdet")
FSAF_SELECTIONS = ("online", "heuristic")
FSAF_BOX_LOSS_TYPES = ("iou", "giou")
BALANCED_L1_VARIANTS = ("paper", "mmdet")


def add_libra_config(cfg: CN) -> None:
    """Add the ``MODEL.LIBRA`` node, with every key at its default, to ``cfg`` in place.

    Defaults are the papers' settings (docs/methods.md):

    - ``MODEL.LIBRA.BFP``: balanced feature pyramid (docs/methods.md#balanced-feature-pyramid).
        - ``FPN_BACKBONE``: name in ``BACKBONE_REGISTRY`` of the FPN that the BFP wraps
          (``build_resnet_fpn_backbone``; ``build_retinanet_resnet_fpn_backbone`` for P3–P7).
        - ``REFINE_TYPE``: ``"non_local"`` (embedded Gaussian), ``"conv"`` (3x3 conv + ReLU) or ``"none"``.
        - ``REFINE_LEVEL``: index, among the FPN outputs ordered by stride, of the level at
          which features are integrated (2 = P4 for P2–P6).
    - ``MODEL.LIBRA.SAMPLER``: RoI sampling of ``LibraROIHeads`` (docs/methods.md#iou-balanced-sampling).
        - ``POS``: ``"instance_balanced"`` or ``"random"`` (Detectron2's).
        - ``NEG``: ``"iou_balanced"`` or ``"random"``.
        - ``NUM_BINS``: K, the number of IoU bins (3).
        - ``BINNING``: ``"paper"`` (bins over [0, background IoU threshold)) or ``"mmdet"``
          (the reference implementation's bins over [floor, max IoU)).
        - ``FLOOR_THR``: negatives with IoU below it are sampled apart; -1 turns it off.
        - ``FLOOR_FRACTION``: share of the negatives drawn from below ``FLOOR_THR``.
    - ``MODEL.LIBRA.BALANCED_L1``: the balanced L1 loss (docs/methods.md#balanced-l1-loss) of the RoI
      box head, used when ``MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE`` is ``"balanced_l1"``.
        - ``ALPHA`` (0.5), ``GAMMA`` (1.5), ``BETA`` (1.0, the transition point).
        - ``VARIANT``: ``"paper"`` (|x| scaled by 1/beta, continuous gradient) or
          ``"mmdet"`` (the reference implementation's formula).
    - ``MODEL.LIBRA.RETINANET.BALANCED_L1``: the same keys for Libra RetinaNet's (and FSAF's
      anchor-based) box loss, used when ``MODEL.RETINANET.BBOX_REG_LOSS_TYPE`` is
      ``"balanced_l1"``; ``BETA`` 0.11, the published Libra RetinaNet's (docs/methods.md#focal-loss-and-retinanet).
    - ``MODEL.LIBRA.FSAF``: the feature-selective anchor-free module (docs/methods.md#fsaf), used with
      ``MODEL.META_ARCHITECTURE: "FSAF"``.
        - ``ANCHOR_BASED``: ``True`` trains RetinaNet's anchor-based branch jointly (AB+FSAF)
          and merges both outputs before NMS; ``False`` is FSAF alone.
        - ``EFFECTIVE_SCALE`` (eps_e, 0.2) and ``IGNORE_SCALE`` (eps_i, 0.5): sides of the
          effective and ignoring boxes as a fraction of the GT box's.
        - ``NORM_SCALE``: S (4.0); distances are predicted in units of S x the level's stride.
        - ``SELECTION``: ``"online"`` (the level of minimum loss) or ``"heuristic"`` (FPN's
          level rule, canonical size 224 at P4 as in Detectron2's RoI pooler).
        - ``BOX_LOSS_TYPE``: ``"iou"`` (-ln IoU, the paper's) or ``"giou"`` (``giou_loss``,
          torchvision's ``generalized_box_iou_loss`` without host-device syncs, bounded
          gradients; the FashionScenes configs use it).
        - ``CLS_LOSS_WEIGHT`` (1.0), ``BOX_LOSS_WEIGHT`` (1.0): weights of the anchor-free losses.
    - ``MODEL.LIBRA.RPN``: the RPN of ``MODEL.PROPOSAL_GENERATOR.NAME: "LibraRPN"``.
        - ``NEG_POS_UB``: at most this many negative anchors per positive, with the RPN's
          losses averaged over the anchors drawn, as the reference's Libra config (5); -1
          (off) is Detectron2's RPN.
    - ``MODEL.LIBRA.CLASS_NAMES``: the class names the model was trained with, in the order of
      its outputs (``[]``: not given). The converter of mmdetection checkpoints writes them;
      ``train_net.py`` then refuses a dataset whose ``thing_classes`` differ, and
      ``libra_rcnn.predict`` labels its drawings with them when the dataset has none.
    - ``MODEL.LIBRA.ANALYSIS``: imbalance statistics written during training (docs/methods.md#the-three-imbalances).
        - ``GRAD_SHARE_PERIOD``: every this many iterations ``LibraFastRCNNOutputLayers``
          writes the inliers' share of the box-regression gradient (20, the period of
          Detectron2's ``PeriodicWriter``; 0 turns it off).

    And one key beside ``DATASETS.TRAIN`` and ``DATASETS.TEST``, where datasets are named:

    - ``DATASETS.COCO_INSTANCES``: ``[[name, json_file, image_root], ...]``, COCO-format
      datasets registered under ``name`` when the config is loaded (:mod:`.datasets`), so that
      training on one's own COCO export needs no code.
    """
    cfg.MODEL.LIBRA = CN()

    cfg.MODEL.LIBRA.BFP = CN()
    cfg.MODEL.LIBRA.BFP.FPN_BACKBONE = "build_resnet_fpn_backbone"
    cfg.MODEL.LIBRA.BFP.REFINE_TYPE = "non_local"
    cfg.MODEL.LIBRA.BFP.REFINE_LEVEL = 2

    cfg.MODEL.LIBRA.SAMPLER = CN()
    cfg.MODEL.LIBRA.SAMPLER.POS = "instance_balanced"
    cfg.MODEL.LIBRA.SAMPLER.NEG = "iou_balanced"
    cfg.MODEL.LIBRA.SAMPLER.NUM_BINS = 3
    cfg.MODEL.LIBRA.SAMPLER.BINNING = "paper"
    cfg.MODEL.LIBRA.SAMPLER.FLOOR_THR = -1.0
    cfg.MODEL.LIBRA.SAMPLER.FLOOR_FRACTION = 0.0

    cfg.MODEL.LIBRA.BALANCED_L1 = _balanced_l1(beta=1.0)
    cfg.MODEL.LIBRA.RETINANET = CN()
    cfg.MODEL.LIBRA.RETINANET.BALANCED_L1 = _balanced_l1(beta=0.11)

    cfg.MODEL.LIBRA.FSAF = CN()
    cfg.MODEL.LIBRA.FSAF.ANCHOR_BASED = True
    cfg.MODEL.LIBRA.FSAF.EFFECTIVE_SCALE = 0.2
    cfg.MODEL.LIBRA.FSAF.IGNORE_SCALE = 0.5
    cfg.MODEL.LIBRA.FSAF.NORM_SCALE = 4.0
    cfg.MODEL.LIBRA.FSAF.SELECTION = "online"
    cfg.MODEL.LIBRA.FSAF.BOX_LOSS_TYPE = "iou"
    cfg.MODEL.LIBRA.FSAF.CLS_LOSS_WEIGHT = 1.0
    cfg.MODEL.LIBRA.FSAF.BOX_LOSS_WEIGHT = 1.0

    cfg.MODEL.LIBRA.RPN = CN()
    cfg.MODEL.LIBRA.RPN.NEG_POS_UB = -1.0

    cfg.MODEL.LIBRA.CLASS_NAMES = []

    cfg.MODEL.LIBRA.ANALYSIS = CN()
    cfg.MODEL.LIBRA.ANALYSIS.GRAD_SHARE_PERIOD = 20

    # Beside DATASETS.TRAIN / TEST, where a dataset is named: declared here, registered on load.
    cfg.DATASETS.COCO_INSTANCES = []


def _balanced_l1(beta: float) -> CN:
    node = CN()
    node.ALPHA = 0.5
    node.GAMMA = 1.5
    node.BETA = beta
    node.VARIANT = "paper"
    return node
