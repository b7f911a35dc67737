"""``python -m libra_rcnn.ablation``: see :mod:`libra_rcnn.ablation.runner`."""
import sys

from .runner import main

sys.exit(main())
