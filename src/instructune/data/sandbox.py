"""The Jinja sandbox templates render in: no code runs, and no body can hang or fill memory.

Jinja's immutable sandbox already stops attribute tricks and mutation; a template could still ask
for a thousand million of something: `{{ 'x' * 10**9 }}`, `{{ '%0999999999d' % 1 }}`,
`{{ 2 ** 10**9 }}`, `{{ 'x'|center(10**9) }}`, nested `range(99999)` loops, `lipsum(10**6)`. Here:

- `*`, `%`, `**` are checked before they run: a repeated string or list at most `MAX_OUTPUT`
  characters or items, format widths at most `MAX_WIDTH`, powers at most `MAX_POWER_BITS` bits;
- width-taking string methods and filters (`center`, `ljust`, `rjust`, `zfill`, `format`,
  `indent`, ...) get the same width bound;
- `range` is bounded per call and counts against an iteration budget per render (`MAX_LOOP`);
- `lipsum` is gone, and a render stops once its output passes `MAX_OUTPUT` characters or its
  time `MAX_SECONDS`.

A body over a bound fails with `TemplateLimitError`, which names the limit.
"""

from __future__ import annotations

import operator
import re
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from types import FrameType

import jinja2
from jinja2.filters import do_center, do_format, do_indent
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_OUTPUT = 1_000_000
"""Characters a rendered body (or a repeated string, or items of a repeated list) may reach."""
MAX_WIDTH = 10_000
"""Largest field width or padding a format or a string method may ask for."""
MAX_LOOP = 100_000
"""Iterations `range` may hand out to one render, all loops together."""
MAX_POWER_BITS = 10_000
"""Largest result of `**`, in bits."""
MAX_SECONDS = 5.0
"""Longest one render may take (main thread only)."""
REMOVED = frozenset({"lipsum"})
"""Jinja globals a template may not use."""
WIDE_METHODS = {"center", "ljust", "rjust", "zfill", "expandtabs", "format", "format_map"}
_WIDTHS = re.compile(r"[%:]\D?[<>^=]?[+\- #]?0?(\d+)(?:\.(\d+))?")
_budget: ContextVar[list[int] | None] = ContextVar("template_loop_budget", default=None)


class TemplateLimitError(Exception):
    """A template body asked for more than the sandbox allows."""


def _check_widths(fmt: str) -> None:
    widths = [int(n) for m in _WIDTHS.finditer(fmt) for n in m.groups() if n]
    if widths and max(widths) > MAX_WIDTH:
        raise TemplateLimitError(f"a format width of {max(widths):,} (the limit is {MAX_WIDTH:,})")


def _check_width_args(args: tuple, kwargs: dict) -> None:
    for v in (*args, *kwargs.values()):
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_WIDTH:
            raise TemplateLimitError(f"a width of {v:,} (the limit is {MAX_WIDTH:,})")
        if isinstance(v, str):
            _check_widths(v)


def _times(left: object, right: object) -> object:
    seq, n = (left, right) if isinstance(right, int) else (right, left)
    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * max(n, 0) > MAX_OUTPUT:
        raise TemplateLimitError(f"repeating {type(seq).__name__} of length {len(seq):,} {n:,} times (the limit "
                                 f"is {MAX_OUTPUT:,} in all)")
    return operator.mul(left, right)


def _power(left: object, right: object) -> object:
    if (isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0
            and right * abs(left).bit_length() > MAX_POWER_BITS):
        raise TemplateLimitError(f"{left} ** {right:,} (the limit is {MAX_POWER_BITS:,} bits)")
    return operator.pow(left, right)


def _modulo(left: object, right: object) -> object:
    if isinstance(left, str):
        _check_widths(left)
    return operator.mod(left, right)


def bounded_range(*args: int) -> range:
    """`range`, at most `MAX_LOOP` items per render across all its calls."""
    r = range(*args)
    budget = _budget.get() or [MAX_LOOP]  # outside `render`: one call's bound
    if len(r) > budget[0]:
        raise TemplateLimitError(f"a loop of {len(r):,} iterations ({MAX_LOOP:,} per render in all)")
    budget[0] -= len(r)
    return r


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with the bounds above."""

    intercepted_binops = frozenset({"*", "%", "**"})

    def call_binop(self, context: jinja2.runtime.Context, operator_: str, left: object, right: object) -> object:
        return {"*": _times, "%": _modulo, "**": _power}[operator_](left, right)

    def call(__self, __context: jinja2.runtime.Context, __obj: object, *args: object,  # noqa: N805 (jinja's shape)
             **kwargs: object) -> object:
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox hands str.format out wrapped
        if isinstance(getattr(method, "__self__", None), str) and getattr(method, "__name__", "") in WIDE_METHODS:
            _check_width_args((method.__self__, *args), kwargs)
        return super().call(__context, __obj, *args, **kwargs)


def _bounded(filter_: Callable[..., str]) -> Callable[..., str]:
    def run(*args: object, **kwargs: object) -> str:
        _check_width_args(args[1:], kwargs)
        return filter_(*args, **kwargs)
    return run


def environment() -> BoundedSandbox:
    env = BoundedSandbox(undefined=jinja2.StrictUndefined, autoescape=False)
    for name in REMOVED:
        env.globals.pop(name, None)
    env.globals["range"] = bounded_range
    env.filters.update(center=_bounded(do_center), indent=_bounded(do_indent), format=_formatted)
    return env


def _formatted(value: object, *args: object, **kwargs: object) -> str:
    _check_widths(str(value))
    return do_format(value, *args, **kwargs)


def _out_of_time(signum: int, frame: FrameType | None) -> None:
    raise TemplateLimitError(f"rendering for longer than {MAX_SECONDS:g} s")


def render(template: jinja2.Template, context: Mapping[str, object]) -> str:
    """Render with a fresh loop budget, stopping once the output passes `MAX_OUTPUT` characters or,
    in the main thread, once it takes longer than `MAX_SECONDS` (loops over long strings that
    print nothing are bounded by nothing else)."""
    token = _budget.set([MAX_LOOP])
    timed = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if timed:
        previous = signal.signal(signal.SIGALRM, _out_of_time)
        signal.setitimer(signal.ITIMER_REAL, MAX_SECONDS)
    try:
        size, parts = 0, []
        chunks: Iterator[str] = template.generate(context)
        for chunk in chunks:
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise TemplateLimitError(f"output longer than {MAX_OUTPUT:,} characters")
            parts.append(chunk)
        return "".join(parts)
    finally:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        _budget.reset(token)
