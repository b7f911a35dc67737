"""Installs the libra_rcnn package (projects/LibraRCNN/libra_rcnn).

Detectron2 itself is not listed as a requirement: it is not on PyPI under its own name.
Install it first (an official build from source, or the recipe in README.md).
"""
from setuptools import find_packages, setup

setup(
    name="libra-rcnn",
    version="0.1.0",
    description="Balanced learning for object detection (Libra R-CNN and relatives) for Detectron2",
    package_dir={"": "projects/LibraRCNN"},
    packages=find_packages("projects/LibraRCNN", include=["libra_rcnn", "libra_rcnn.*"]),
    python_requires=">=3.8",
    install_requires=["torch", "torchvision", "fvcore", "iopath", "pycocotools>=2.0.11", "numpy", "Pillow", "matplotlib", "scipy"],
    # python -m libra_rcnn.export --format onnx, and the export tests (ONNX Runtime).
    extras_require={"export": ["onnx", "onnxruntime"]},
)
