"""Typed configuration: dataclasses loaded from YAML, with dotted `key=value` overrides.

Every field of a config dataclass carries a docstring (the string literal under it).
`load_config` reports every invalid field at once, each with the fix, and a dataclass
may add cross-field checks with a `problems() -> list[str]` method.

    cfg = load_config(TrainConfig, "configs/lora.yaml", ["optim.lr=3e-4", "max_steps=50"])
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from instructune.errors import InstructuneError, collect
from instructune.types import JSON, JSONValue

T = TypeVar("T")


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, read from its source (and its bases')."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            docs.update(field_docs(base))
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return docs
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def flat(factory: Callable[[], T] | None = None) -> T:
    """A section held as one typed value whose fields are written in its parent's YAML mapping: `data:` has a
    `task` (TaskSpec) and a `split` (SplitSpec), and YAML still reads `data: {source: x, seed: 3}`. Without
    a `factory` the section is required (its own required fields must be given)."""
    if factory is None:
        return dataclasses.field(metadata={"flat": True})  # type: ignore[return-value]
    return dataclasses.field(default_factory=factory, metadata={"flat": True})


def is_flat(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("flat"))


@cache
def yaml_fields(cls: type) -> dict[str, tuple[type, str | None]]:
    """Every YAML key of dataclass `cls`: key -> (the dataclass declaring it, the flat section holding it or
    None). A flat section's own keys sit beside the parent's."""
    out: dict[str, tuple[type, str | None]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if is_flat(f):
            out.update({k: (owner, f.name) for k, (owner, _) in yaml_fields(hints[f.name]).items()})
        else:
            out[f.name] = (cls, None)
    return out


MAX_NODES = 100_000
"""Values a YAML document may hold once its aliases are expanded (a config holds hundreds)."""
MAX_QUOTED = 200
"""Characters of a value an error message quotes."""


def quoted(value: object) -> str:
    """`repr(value)`, cut to MAX_QUOTED characters: an error message never carries a whole document."""
    text = repr(value)
    return text if len(text) <= MAX_QUOTED else text[:MAX_QUOTED] + f"... ({len(text):,} characters)"


def expanded_size(data: object, limit: int = MAX_NODES) -> int:
    """How many values `data` holds with every shared (aliased) part counted each time it appears;
    counting stops past `limit`. A YAML alias bomb is small on disk and enormous expanded."""
    count, stack = 0, [data]
    while stack and count <= limit:
        node = stack.pop()
        count += 1
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    return count


def safe_yaml(text: str, where: str) -> object:
    """`yaml.safe_load`, refusing documents whose aliases expand past MAX_NODES values."""
    data = yaml.safe_load(text)
    if expanded_size(data) > MAX_NODES:
        raise InstructuneError(f"{where}: the YAML expands to more than {MAX_NODES:,} values (its aliases, `*name`, "
                               "repeat parts of it over and over); write the values out, or use fewer aliases.")
    return data


def load_yaml_file(path: Path, what: str = "a config is a few levels of field: value") -> object:
    """A YAML file's data; unreadable text, a parse error (file, line, column), too deep nesting or an
    alias bomb is one error naming the fix. `what` says what such a file should look like."""
    try:
        return safe_yaml(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError as e:
        raise InstructuneError(f"{path}: not UTF-8 text ({e.reason}); save the file as UTF-8.") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise InstructuneError(f"{path}{where}: YAML does not parse ({problem}); fix the syntax there.") from None
    except RecursionError:
        raise InstructuneError(f"{path}: YAML nested too deeply to read; {what}.") from None


def read_yaml(path: str | Path) -> JSON:
    """Read a YAML mapping; a parse error names the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise InstructuneError(f"config file {path} does not exist: check the path (configs/ holds examples).")
    data = load_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InstructuneError(f"{path}: the top level must be a mapping of field: value, got {type(data).__name__}.")
    return data


def apply_overrides(data: JSON, overrides: list[str]) -> JSON:
    """Apply `a.b.c=value` overrides; the value is parsed as YAML (`lr=3e-4`, `targets=[q_proj,v_proj]`)."""
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"override {quoted(item)} is not key=value (example: optim.lr=3e-4)")
            continue
        try:
            value = safe_yaml(raw, f"override {key.strip()}") if raw.strip() else ""
        except (yaml.YAMLError, RecursionError):
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    collect(problems, "invalid command-line overrides")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                data: JSON | None = None) -> T:
    """Build `cls` from a YAML file (or a dict) plus overrides, reporting every problem at once."""
    raw = dict(data or {})
    if path is not None:
        raw.update(read_yaml(path))
    apply_overrides(raw, list(overrides or []))
    problems: list[str] = []
    cfg = from_dict(cls, raw, "", problems)
    where = f"config {path}" if path else "config"
    collect(problems, f"{where} is invalid")
    return cfg  # type: ignore[return-value]


def from_dict(cls: type, data: object, prefix: str, problems: list[str]) -> object:
    """Convert a mapping into dataclass `cls`, appending problems instead of raising."""
    if not isinstance(data, dict):
        problems.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping of fields, got {quoted(data)}")
        return None
    if hasattr(cls, "from_config"):  # a section that builds itself (a method's name picks its options)
        return cls.from_config(data, prefix, problems)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    keys = yaml_fields(cls)
    docs = {k: v for owner in {owner for owner, _ in keys.values()} for k, v in field_docs(owner).items()}
    docs.update(field_docs(cls))
    kwargs: dict[str, object] = {}
    sections: dict[str, JSON] = {n: {} for n, f in fields.items() if is_flat(f)}
    failed = False
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in keys:
            close = suggest(str(key), list(keys), docs)
            hint = f"did you mean '{prefix}{close}'?" if close else f"known fields: {', '.join(keys)}"
            problems.append(f"{name}: unknown field; {hint}")
            continue
        if (section := keys[key][1]) is not None:
            sections[section][key] = value  # built below, as one value
            continue
        seen = len(problems)
        ok, converted = convert(hints[key], value, f"{name}.", problems)
        if ok:
            kwargs[key] = converted
        else:
            failed = True
            if len(problems) == seen:  # a nested section has already said what is wrong
                doc = f" ({docs[key]})" if key in docs else ""
                problems.append(f"{name}: {quoted(value)} is not a valid {type_name(hints[key])}{doc}")
    for section, values in sections.items():  # its fields carry the parent's prefix: `data.source`
        factory = fields[section].default_factory  # the parent's defaults for it, if it has any
        defaults = to_dict(factory()) if factory is not dataclasses.MISSING else {}  # type: ignore[misc]
        kwargs[section] = from_dict(hints[section], {**defaults, **values}, prefix, problems)
        failed = failed or kwargs[section] is None
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
    for n in missing:
        if not any(p.startswith(f"{prefix}{n}") for p in problems):
            problems.append(f"{prefix}{n}: required field is missing ({docs.get(n, type_name(hints[n]))})")
    if missing or failed:
        return None  # cross-field checks would read a half-built config; built sections still ran theirs
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        problems.append(f"{prefix or 'config'}: {e}")
        return None
    check = getattr(obj, "problems", None)
    if callable(check):
        problems.extend(f"{prefix}{p}" for p in check())
    return obj


def suggest(key: str, fields: list[str], docs: dict[str, str]) -> str | None:
    """The field a misspelt `key` most likely means: the closest spelling, else the one field whose docstring
    holds every word of it, as a name from another tool does (`learning_rate` -> `lr`, "Peak learning rate")."""
    close = difflib.get_close_matches(key, fields, n=1)
    if close:
        return close[0]
    words = [w for w in re.split(r"[^a-z0-9]+", key.lower()) if len(w) > 1]
    named = [f for f in fields if words and all(re.search(rf"\b{w}", docs.get(f, "").lower()) for w in words)]
    return named[0] if len(named) == 1 else None


def convert(tp: object, value: object, prefix: str, problems: list[str]) -> tuple[bool, object]:
    """Check `value` against type `tp`, converting where it is unambiguous (int -> float, str -> Path)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return True, value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return True, None
        for arg in args:
            if arg is type(None):
                continue
            ok, out = convert(arg, value, prefix, [])
            if ok:
                return convert(arg, value, prefix, problems)
        return False, None
    if origin is Literal:
        return (value in args), value
    if dataclasses.is_dataclass(tp):
        out = from_dict(tp, value, prefix, problems)
        return out is not None, out
    if origin in (list, tuple):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single value where a list is expected: `targets=q_proj`
        if not isinstance(value, list):
            return False, None
        item_tp = args[0] if args else Any
        items = [convert(item_tp, v, f"{prefix}{i}.", problems) for i, v in enumerate(value)]  # keep.0.limit
        return all(ok for ok, _ in items), [v for _, v in items]
    if origin is dict:
        return isinstance(value, dict), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return (isinstance(value, int) and not isinstance(value, bool)), value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` as a string
            try:
                return True, float(value)
            except ValueError:
                return False, None
        return (isinstance(value, (int, float)) and not isinstance(value, bool)), float(value) if isinstance(
            value, (int, float)) else None
    if tp is str:
        return isinstance(value, (str, int, float)) and not isinstance(value, bool), str(value)
    if tp is Path:
        return isinstance(value, str), Path(value) if isinstance(value, str) else None
    return isinstance(value, tp), value


def type_name(tp: object) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "choice of " + " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp) if a is not type(None)) + " (or null)"
    if origin in (list, tuple):
        return f"list of {type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def to_dict(cfg: object) -> JSON:
    """A config as plain YAML-able data (Paths as strings; a section with `as_config_dict` in its own form)."""

    def plain(v: object) -> JSONValue:
        if hasattr(v, "as_config_dict"):
            return plain(v.as_config_dict())
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            out: JSON = {}
            for f in dataclasses.fields(v):
                value = plain(getattr(v, f.name))
                out.update(value if is_flat(f) else {f.name: value})  # a flat section's keys beside its parent's
            return out
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(cfg)
