"""``python -m libra_rcnn.predict``: detect objects in your own images (:mod:`libra_rcnn.tools.predict`)."""
import sys

from .tools.predict import main

if __name__ == "__main__":
    sys.exit(main())
