"""Datasets of the project: the Fashion-MNIST scenes."""
from .fashion_scenes import FASHION_MNIST_CLASSES, build_fashion_scenes, register_fashion_scenes

__all__ = ["FASHION_MNIST_CLASSES", "build_fashion_scenes", "register_fashion_scenes"]
