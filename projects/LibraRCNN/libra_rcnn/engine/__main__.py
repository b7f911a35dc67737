"""``python -m libra_rcnn.engine``: the command line of ``train_net.py`` (:func:`libra_rcnn.engine.cli.cli`)."""
from .cli import cli

cli()
