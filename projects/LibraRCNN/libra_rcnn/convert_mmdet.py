"""``python -m libra_rcnn.convert_mmdet INPUT.pth OUTPUT.pth``: the converter's command
(:func:`libra_rcnn.converters.mmdet_convert.main`)."""
import sys

from .converters.mmdet_convert import main

if __name__ == "__main__":
    sys.exit(main())
