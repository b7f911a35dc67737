"""``python -m libra_rcnn.export``: TorchScript or ONNX by tracing (:mod:`libra_rcnn.tools.export`)."""
import sys

from .tools.export import main

if __name__ == "__main__":
    sys.exit(main())
