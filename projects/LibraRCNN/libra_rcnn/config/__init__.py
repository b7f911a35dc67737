"""The config layer: the project's keys (``MODEL.LIBRA``), the checks of component arguments,
and loading YAML and LazyConfig files for the commands. Imports nothing else of the project."""
from . import checks, datasets, defaults, loading
from .checks import *  # noqa: F401,F403
from .datasets import *  # noqa: F401,F403
from .defaults import *  # noqa: F401,F403
from .loading import *  # noqa: F401,F403

__all__ = [*checks.__all__, *datasets.__all__, *defaults.__all__, *loading.__all__]
