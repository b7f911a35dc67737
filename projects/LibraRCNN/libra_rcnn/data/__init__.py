"""Datasets of the project (the Fashion-MNIST scenes, own COCO exports), the checks of training
records, and the training loader whose batches a resume restores exactly (:mod:`.exact_order`)."""
from .fashion_scenes import FASHION_MNIST_CLASSES, build_fashion_scenes, register_fashion_scenes

__all__ = ["FASHION_MNIST_CLASSES", "build_fashion_scenes", "register_fashion_scenes"]
