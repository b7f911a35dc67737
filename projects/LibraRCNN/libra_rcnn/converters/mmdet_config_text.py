"""Reading an mmdetection config without mmengine and without running it.

mmengine keeps the whole training config in a checkpoint (``meta["cfg"]``, mmdetection 3.x;
``meta["config"]`` in 2.x), as Python text of ``key = dict(...)`` assignments:
:func:`read_config_text` reads it by a literal evaluation of its syntax tree. The model zoo
publishes each checkpoint's config file beside it, which inherits from others through ``_base_``:
:func:`read_config_file` follows that chain as mmengine does, with the same literal evaluation.
"""
import ast
import copy
import operator
import os
import re
from typing import Any, Dict, List, Optional

from .errors import ConversionError

__all__ = ["read_config_text", "read_config_file", "merge_config", "Unreadable"]

BASE_KEY = "_base_"
DELETE_KEY = "_delete_"
# Operators configs use on literals: "data/" + "ann.json", [a] + [b], 1333 * 2, 0.02 / 8.
_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
# mmengine's text references to a base's variable: {{_base_.a.b}}.
_BASE_REFERENCE = re.compile(r"\{\{\s*_base_\.([\w.]+)\s*\}\}")


def read_config_text(text: str, where: str = "the checkpoint's config text", base: Optional[dict] = None) -> Dict[str, Any]:
    """The variables of an mmengine / mmcv config as text (``Config.pretty_text``, or a file).

    Only literals are evaluated: numbers, strings, ``None``/``True``/``False``, lists, tuples,
    sets, dicts, ``dict(key=value, **mapping)`` calls, unary minus, ``+ - * /`` on numbers, ``+``
    of two strings, lists or tuples and their repetition ``* n``, names of variables assigned
    earlier in the text, and, with ``base``, ``_base_.a.b`` references and ``del _base_.a``.
    Nothing in the text is executed.

    Args:
        text: the config's Python text.
        where: names the text in errors (a file path, or the checkpoint's entry).
        base: the variables of the config's ``_base_`` files, for its references to them.

    Raises:
        ConversionError: naming ``where`` and the line of anything else (an import, a call, ...).
    """
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        raise ConversionError(f"{where} is not Python (line {e.lineno}: {e.msg})") from e
    return _evaluate(tree.body, where, base)


def _evaluate(statements: List[ast.stmt], where: str, base: Optional[dict]) -> Dict[str, Any]:
    variables: Dict[str, Any] = {}
    for statement in statements:
        if isinstance(statement, ast.Delete) and base is not None:
            for target in statement.targets:
                parent, key = _base_slot(target, base, where)
                parent.pop(key, None)
            continue
        if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)):  # fmt: skip
            raise ConversionError(f"{where}, line {statement.lineno}: only 'name = value' statements are read")
        try:
            variables[statement.targets[0].id] = _literal(statement.value, variables, base, where)
        except ConversionError as e:  # an error only if the variable is used (test-time augmentation, ...)
            variables[statement.targets[0].id] = Unreadable(str(e))
    return variables


class Unreadable:
    """A config variable that is not a literal (a comprehension, a call): reading it is an error,
    which names its file and line; a config may hold such variables where nothing reads them."""

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self) -> str:
        return f"Unreadable({self.reason!r})"


def _base_slot(node: ast.AST, base: dict, where: str):
    """(the dict holding it, its key) of a ``_base_.a.b`` expression."""
    if isinstance(node, ast.Attribute):
        holder = _literal(node.value, {}, base, where)
        if isinstance(holder, dict):
            return holder, node.attr
    raise ConversionError(f"{where}, line {getattr(node, 'lineno', '?')}: cannot read {ast.unparse(node)[:60]!r}")


def _literal(node: ast.AST, variables: Dict[str, Any], base: Optional[dict], where: str) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_literal(e, variables, base, where) for e in node.elts]
        return {ast.List: list, ast.Tuple: tuple, ast.Set: list}[type(node)](items)
    if isinstance(node, ast.Dict):
        return {_literal(k, variables, base, where): _literal(v, variables, base, where) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        out = {}
        for kw in node.keywords:  # dict(a=1, **other): ``other``'s items in order
            value = _literal(kw.value, variables, base, where)
            if kw.arg is None and not isinstance(value, dict):
                break
            out.update(value if kw.arg is None else {kw.arg: value})
        else:
            return out
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand, variables, base, where)
        if isinstance(value, (int, float)):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        left, right = _literal(node.left, variables, base, where), _literal(node.right, variables, base, where)
        numbers = all(isinstance(v, (int, float)) for v in (left, right))
        repeat = isinstance(node.op, ast.Mult) and {type(left), type(right)} & {list, tuple, str} and int in {type(left), type(right)}
        if numbers or repeat or (type(left) is type(right) and isinstance(node.op, ast.Add)):
            return _ARITHMETIC[type(node.op)](left, right)
    if isinstance(node, ast.Name) and isinstance(variables.get(node.id), Unreadable):
        raise ConversionError(variables[node.id].reason)
    if isinstance(node, ast.Name) and node.id in variables:
        return variables[node.id]
    if isinstance(node, ast.Name) and node.id == BASE_KEY and base is not None:
        return base
    if isinstance(node, ast.Attribute):
        holder = _literal(node.value, variables, base, where)
        if isinstance(holder, dict) and node.attr in holder:
            return copy.deepcopy(holder[node.attr])
    raise ConversionError(
        f"{where}, line {getattr(node, 'lineno', '?')}: cannot read {ast.unparse(node)[:60]!r} as a literal"
    )


def merge_config(child: Dict[str, Any], base: Dict[str, Any]) -> Dict[str, Any]:
    """``child`` merged into a copy of ``base``, as mmengine merges a config into its bases: dicts
    key by key, recursively, unless the child's dict says ``_delete_=True`` (then it replaces the
    base's); anything else (lists included) replaces the base's value."""
    merged = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and not value.get(DELETE_KEY, False):
            merged[key] = merge_config(value, merged[key])
        else:
            merged[key] = _without_delete(value)
    return merged


def _without_delete(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_delete(v) for k, v in value.items() if k != DELETE_KEY}
    if isinstance(value, (list, tuple)):
        return type(value)(_without_delete(v) for v in value)
    return value


def _substitute(value: Any, references: Dict[str, str], base: dict, where: str) -> Any:
    """Replace the placeholder strings of ``{{_base_.x}}`` references by the base's values."""
    if isinstance(value, str) and value in references:
        found: Any = base
        for part in references[value].split("."):
            if not isinstance(found, dict) or part not in found:
                raise ConversionError(f"{where}: {{{{_base_.{references[value]}}}}} is not in its _base_ files")
            found = found[part]
            if isinstance(found, Unreadable):
                raise ConversionError(found.reason)
        return copy.deepcopy(found)
    if isinstance(value, dict):
        return {k: _substitute(v, references, base, where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_substitute(v, references, base, where) for v in value)
    return value


def read_config_file(path: str, _seen: Optional[List[str]] = None) -> Dict[str, Any]:
    """The variables of an mmdetection config file, its ``_base_`` files merged in, without running it.

    As mmengine reads it: the ``_base_`` files (one path or a list, relative to the file's folder)
    are read first, recursively, and may not define the same variable twice; then the file's own
    variables, which may refer to the bases' (``_base_.model``, ``{{_base_.backend_args}}``), are
    merged into theirs (:func:`merge_config`).

    Raises:
        ConversionError: for a missing file, a ``_base_`` cycle, a base from another package
            (``mmdet::...``), two bases with one variable, or text that is not literal, naming the
            file and line.
    """
    path = os.path.abspath(path)
    seen = (_seen or []) + [path]
    if path in (_seen or []):
        raise ConversionError(f"{path}: a _base_ cycle ({' -> '.join(seen)})")
    if not os.path.isfile(path):
        raise ConversionError(f"mmdetection config file {path} not found")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    references: Dict[str, str] = {}

    def placeholder(match) -> str:
        name = f"__libra_base_reference_{len(references)}__"
        references[name] = match.group(1)
        return repr(name)

    text = _BASE_REFERENCE.sub(placeholder, text)
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        raise ConversionError(f"{path} is not Python (line {e.lineno}: {e.msg})") from e
    base_paths: List[str] = []
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and any(isinstance(t, ast.Name) and t.id == BASE_KEY for t in statement.targets):
            value = _literal(statement.value, {}, None, path)
            base_paths = [value] if isinstance(value, str) else list(value)
    base: Dict[str, Any] = {}
    for relative in base_paths:
        if "::" in relative:
            raise ConversionError(f"{path}: _base_ {relative!r} is in another package; pass the file itself")
        variables = read_config_file(os.path.join(os.path.dirname(path), relative), seen)
        twice = sorted(base.keys() & variables.keys())
        if twice:
            raise ConversionError(f"{path}: its _base_ files both define {', '.join(twice)}")
        base.update(variables)
    own = [s for s in tree.body if not (isinstance(s, ast.Assign)
                                         and any(isinstance(t, ast.Name) and t.id == BASE_KEY for t in s.targets))]  # fmt: skip
    variables = _evaluate(own, path, base)
    variables = _substitute(variables, references, base, path)
    return merge_config(variables, base)
