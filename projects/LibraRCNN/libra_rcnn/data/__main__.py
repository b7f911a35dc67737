"""``python -m libra_rcnn.data``: build the Fashion-MNIST scenes dataset (see fashion_scenes.py)."""
import sys

from .fashion_scenes import main

sys.exit(main())
