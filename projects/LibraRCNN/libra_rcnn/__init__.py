"""libra-rcnn: balanced learning for object detection, as a Detectron2 project.

Importing this package registers every component in Detectron2's registries:

- ``BACKBONE_REGISTRY``: ``build_bfp_backbone`` (balanced feature pyramid around an FPN) and
  ``build_retinanet_resnet_fpn_p7_no_relu_backbone`` (mmdetection's P6/P7, for converted models);
- ``ROI_HEADS_REGISTRY``: ``LibraROIHeads`` (IoU-balanced sampling, balanced L1 box loss);
- ``PROPOSAL_GENERATOR_REGISTRY``: ``LibraRPN`` (the authors' bound on negative anchors);
- ``META_ARCH_REGISTRY``: ``LibraRetinaNet`` (RetinaNet with the balanced L1 box loss) and
  ``FSAF`` (the feature-selective anchor-free module, alone or with RetinaNet's anchors);
- ``DatasetCatalog``: ``fashion_scenes_train`` and ``fashion_scenes_val``.

Add the project's config keys with :func:`add_libra_config`.

The sub-packages, imported one way (tools -> engine -> modeling -> config):

- :mod:`.config`: the ``MODEL.LIBRA`` keys, argument checks, loading configs for the commands;
- :mod:`.modeling`: the detector's components;
- :mod:`.data`: the FashionScenes dataset, the checks of training records and the training
  loader that resumes exactly;
- :mod:`.engine`: the trainer, checkpoints, cluster launchers and ``train_net.py``'s command line;
- :mod:`.tools`: predict, draw and export with a trained model;
- :mod:`.converters`: mmdetection checkpoints to Detectron2;
- :mod:`.ablation`, :mod:`.analysis`: experiments over seeds, and the imbalance figures.

The commands ``python -m libra_rcnn.predict``, ``.export`` and ``.convert_mmdet`` are the thin
modules of the same names here.
"""
from . import modeling
from .config import add_libra_config
from .data import FASHION_MNIST_CLASSES, build_fashion_scenes, register_fashion_scenes
from .modeling import *  # noqa: F401,F403 (every component, registered on import)

register_fashion_scenes()

__version__ = "0.1.0"

__all__ = ["add_libra_config", *modeling.__all__, "FASHION_MNIST_CLASSES", "build_fashion_scenes", "register_fashion_scenes"]
