"""The Jinja sandbox with size caps on everything a template can grow.

Jinja's sandbox blocks unsafe attributes and caps ``range``, but a template can
still ask for a huge string in one call (``'x'|center(2000000000)``, ``replace``,
``'%999999999s' % x``, ``'{:>999999999}'.format(x)``) or grow one by doubling
(``s ~ s``, ``l + l`` in a loop). Every operation that can make its result much
larger than its inputs is checked *before* it runs, and every filter, method
call, concatenation and the rendered output are checked after, so memory stays
bounded by ``MAX_SIZE`` items per value.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sized
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.filters import FILTERS
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg

MAX_SIZE = 10_000_000  # characters of a string, items of a list
MAX_INT_BITS = 100_000
MAX_ITERATIONS = 1_000_000  # loop iterations in one render: nested loops must not pin the event loop

Check = Callable[..., None]


def check_size(value: Any) -> Any:
    """``value`` if it is not too large, else a ``SecurityError``."""
    if isinstance(value, str | list | tuple | dict | bytes) and len(value) > MAX_SIZE:
        raise SecurityError(f"a template value would be too large (over {MAX_SIZE:,} items)")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise SecurityError("a template number would be too large")
    return value


def _refuse_if(condition: bool, what: str) -> None:
    if condition:
        raise SecurityError(f"the result of {what} would be too large")


def _width(value: Any) -> int:
    return value if isinstance(value, int) else len(value) if isinstance(value, str) else 0


def _check_width(value: Any, width: Any = 80, *args: Any, **kwargs: Any) -> None:
    _refuse_if(_width(width) > MAX_SIZE, "padding")


def _check_indent(text: Any, width: Any = 4, *args: Any, **kwargs: Any) -> None:
    lines = str(text).count("\n") + 1
    _refuse_if(lines * _width(width) > MAX_SIZE, "indent")


def _check_replace(text: Any, old: Any = "", new: Any = "", count: Any = None, *args: Any) -> None:
    if not isinstance(text, str) or not isinstance(old, str) or not isinstance(new, str):
        return
    hits = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    _refuse_if(len(text) + hits * max(0, len(new) - len(old)) > MAX_SIZE, "replace")


def _check_format(template: Any, *args: Any, **kwargs: Any) -> None:
    """Widths and precisions come from digits in the format string or from ``*``/``{}`` arguments."""
    if not isinstance(template, str):
        return
    number = ""
    for char in template + " ":
        if char.isdigit():
            number += char
            continue
        _refuse_if(len(number) > 7 and int(number) > MAX_SIZE, "formatting")
        number = ""
    values = list(args) + list(kwargs.values())
    for value in values[0] if len(values) == 1 and isinstance(values[0], tuple | list) else values:
        _refuse_if(isinstance(value, int) and value > MAX_SIZE, "formatting")


def _check_join(items: Any, separator: Any = "", *args: Any, **kwargs: Any) -> None:
    if isinstance(items, Sized) and isinstance(separator, str):
        _refuse_if(len(items) * len(separator) > MAX_SIZE, "join")


def _check_wordwrap(text: Any, width: Any = 79, breaks: Any = True, wrapstring: Any = None, *a: Any) -> None:
    extra = len(wrapstring) if isinstance(wrapstring, str) else 1
    _refuse_if(len(str(text)) * (1 + extra) > MAX_SIZE, "wordwrap")


def _check_count(value: Any, count: Any = 1, *args: Any, **kwargs: Any) -> None:
    _refuse_if(isinstance(count, int) and count > MAX_SIZE, "batch/slice")


def _check_tabs(text: Any, tabsize: Any = 8, *args: Any, **kwargs: Any) -> None:
    if isinstance(tabsize, int):
        _refuse_if(str(text).count("\t") * tabsize > MAX_SIZE, "expandtabs")


_FILTER_CHECKS: dict[str, Check] = {
    "center": _check_width,
    "indent": _check_indent,
    "replace": _check_replace,
    "format": _check_format,
    "join": _check_join,
    "wordwrap": _check_wordwrap,
    "batch": _check_count,
    "slice": _check_count,
}
_METHOD_CHECKS: dict[str, Check] = {
    "center": _check_width,
    "ljust": _check_width,
    "rjust": _check_width,
    "zfill": _check_width,
    "replace": _check_replace,
    "expandtabs": _check_tabs,
    "format": _check_format,
    "format_map": _check_format,
}


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` with its pre-check (if any) and a size check on its result."""
    check = _FILTER_CHECKS.get(name)
    skip = 1 if _PassArg.from_obj(func) is not None else 0

    @functools.wraps(func)  # keeps the pass_context/pass_environment marker
    def bounded(*args: Any, **kwargs: Any) -> Any:
        if check is not None:
            check(*args[skip:], **kwargs)
        return check_size(func(*args, **kwargs))

    return bounded


class _CodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` with a size check (Jinja joins concatenations without the sandbox)."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.check_size(")
        super().visit_Concat(node, frame)
        self.write(")")


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox (no ``list.append`` or ``dict.update``) with size caps."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters = {name: _bounded_filter(name, func) for name, func in FILTERS.items()}
        self.iterations_left = MAX_ITERATIONS

    def reset_budget(self) -> None:
        """A fresh loop budget for the next render (renders run one at a time, on the loop's thread)."""
        self.iterations_left = MAX_ITERATIONS

    def counted(self, iterable: Any) -> Any:
        """What every ``{% for %}`` iterates: the items of ``iterable``, each one charged to the budget."""
        for item in iterable:
            self.iterations_left -= 1
            if self.iterations_left < 0:
                raise SecurityError(f"its loops ran more than {MAX_ITERATIONS:,} iterations")
            yield item

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """Parse, then route every ``for`` loop's iterable through ``counted``."""
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            counted = nodes.EnvironmentAttribute("counted", lineno=loop.lineno)
            loop.iter = nodes.Call(counted, [loop.iter], [], None, None, lineno=loop.lineno)
        return tree

    check_size = staticmethod(check_size)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _check_repeat(left, right)
            _check_repeat(right, left)
        elif operator == "**":
            _refuse_if(_power_too_large(left, right), "'**'")
        elif operator == "+" and isinstance(left, str | list | tuple) and isinstance(right, Sized):
            _refuse_if(len(left) + len(right) > MAX_SIZE, "'+'")
        elif operator == "%":
            _check_format(left, right)
        return check_size(super().call_binop(context, operator, left, right))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(__obj, "__self__", None)
        check = _METHOD_CHECKS.get(getattr(__obj, "__name__", ""))
        if isinstance(owner, str) and check is not None:
            check(owner, *args, **kwargs)
        if isinstance(owner, str) and getattr(__obj, "__name__", "") == "join" and args:
            _check_join(args[0], owner)
        return check_size(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """Jinja's sandboxed ``str.format``, with the format string and widths checked first."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        template = value.__self__

        def bounded(*args: Any, **kwargs: Any) -> str:
            _check_format(
                template, *args, *(a for m in args if isinstance(m, dict) for a in m.values()), **kwargs
            )
            result: str = check_size(wrapped(*args, **kwargs))
            return result

        return bounded


def _check_repeat(sequence: Any, count: Any) -> None:
    if isinstance(sequence, int) and isinstance(count, int) and not isinstance(sequence, bool):
        _refuse_if(sequence.bit_length() + count.bit_length() > MAX_INT_BITS, "'*'")
    elif isinstance(sequence, str | list | tuple) and isinstance(count, int):
        _refuse_if(len(sequence) * count > MAX_SIZE, "'*'")


def _power_too_large(base: Any, exponent: Any) -> bool:
    if not isinstance(base, int) or not isinstance(exponent, int) or exponent <= 0 or abs(base) <= 1:
        return False
    return exponent * base.bit_length() > MAX_INT_BITS


def render_bounded(chunks: Any) -> str:
    """Join a template's output chunks, refusing output larger than ``MAX_SIZE`` characters."""
    parts: list[str] = []
    total = 0
    for chunk in chunks:
        total += len(chunk)
        _refuse_if(total > MAX_SIZE, "the template")
        parts.append(chunk)
    return "".join(parts)
