"""Checks of the components' arguments, and the config keys they are named by.

A component checks its constructor arguments and names them in its errors
(:class:`ArgumentError`: ``num_bins = 0 is out of range; ...``), so that a LazyConfig or Python
user reads the name they wrote. Built from a YAML config, the same error names the config key
instead (``MODEL.LIBRA.SAMPLER.NUM_BINS = 0 ...``): the code that reads the keys wraps the
construction in :func:`config_keys`, or the constructor is decorated with it.
"""
import contextlib
import functools
from typing import Any, Dict, Iterable

from fvcore.common.config import CfgNode

__all__ = ["ArgumentError", "check_choice", "check_range", "check_int", "config_keys"]


class ArgumentError(ValueError):
    """A value out of its range or choices; ``argument`` is the name the message starts with."""

    def __init__(self, argument: str, message: str):
        super().__init__(message)
        self.argument = argument

    def renamed(self, name: str) -> "ArgumentError":
        """The same error naming ``name`` in place of the argument."""
        text = str(self)
        if text.startswith(self.argument):
            text = name + text[len(self.argument) :]
        return ArgumentError(name, text)


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``.

    Raises:
        ArgumentError: naming ``name``, the value and the allowed values.
    """
    allowed = tuple(allowed)
    if value not in allowed:
        raise ArgumentError(name, f"{name} = {value!r} is not allowed; choose one of {list(allowed)}")
    return value


def check_range(name: str, value, low=None, high=None, *, low_open=False, high_open=False):
    """Return ``value`` if ``low <= value <= high`` (``<`` where the end is open).

    Raises:
        ArgumentError: naming ``name``, the value and the allowed interval.
    """
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        lo, hi = "-inf" if low is None else low, "inf" if high is None else high
        raise ArgumentError(name, f"{name} = {value!r} is out of range; it must lie in {left}{lo}, {hi}{right}")
    return value


def check_int(name: str, value, low=None) -> int:
    """Return ``int(value)`` if ``value`` is a whole number >= ``low``.

    Raises:
        ArgumentError: naming ``name`` and the value.
    """
    if isinstance(value, bool) or value != int(value):
        raise ArgumentError(name, f"{name} = {value!r} must be an integer" + ("" if low is None else f" >= {low}"))
    return check_range(name, int(value), low)


class _ConfigKeys(contextlib.ContextDecorator):
    def __init__(self, keys: Dict[str, str]):
        self.keys = keys

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if isinstance(exc, ArgumentError) and exc.argument in self.keys:
            raise exc.renamed(self.keys[exc.argument]) from None
        return False

    def __call__(self, init):
        """Decorate a constructor under Detectron2's ``@configurable``: only when it is called
        with a config (``Class(cfg, ...)``) are the arguments renamed to the keys."""

        @functools.wraps(init)
        def wrapped(obj, *args, **kwargs):
            from_cfg = (args and isinstance(args[0], CfgNode)) or isinstance(kwargs.get("cfg"), CfgNode)
            if not from_cfg:
                return init(obj, *args, **kwargs)
            with self:
                return init(obj, *args, **kwargs)

        return wrapped


def config_keys(**keys: str) -> _ConfigKeys:
    """Name config keys in place of arguments in the :class:`ArgumentError` raised inside.

    ``keys`` maps an argument name to its config key. Use it as a context manager around a
    construction from a config, or as a decorator above ``@configurable`` on ``__init__``.
    """
    return _ConfigKeys(keys)

