"""Typed configuration files: dataclasses from dicts (every key and type checked), dotted overrides, YAML/JSON.

Every config in anyorder (run configs, model configs, sampling configs, the small demo networks) is a
dataclass validated by :func:`config_from_dict`: an unknown key is an error that names the key and
lists the valid ones.

Official configuration files (a release's ``config.json``, the official YAML) are read value by value with
:func:`official_value` / :class:`OfficialConfig`: each value is checked for its kind and a rule
(:func:`at_least`, :func:`between`, :func:`one_of`), never coerced (``"64"`` is not 64, 2.5 is not 2), and a
bad one is a :class:`ValueError` naming the file, the key, the value and the rule.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml

__all__ = ['config_from_dict', 'config_to_dict', 'coerce_value', 'apply_overrides', 'read_config_file', 'Rule',
           'at_least', 'between', 'one_of', 'official_value', 'OfficialConfig', 'MISSING']


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = getattr(tp, "__origin__", None)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"config key {key!r} must be a mapping, got {value!r}")
        return config_from_dict(tp, value, prefix=key + ".")
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config key {key!r} must be true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ValueError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"config key {key!r} must be a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(tp.__args__):
            raise ValueError(f"config key {key!r} must be a list of {len(tp.__args__)} values, got {value!r}")
        return tuple(_coerce(t, v, key) for t, v in zip(tp.__args__, value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config key {key!r} must be a mapping, got {value!r}")
        return dict(value)
    return value

def coerce_value(tp: Any, value: Any, key: str) -> Any:
    """``value`` as type ``tp`` (bool, int, float, str, tuples, dataclasses), checked as strictly as our own
    config files; an error names ``key`` and the value."""
    return _coerce(tp, value, key)


def config_from_dict(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a dict, checking every key and type."""
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        raise ValueError(f"unknown config key {prefix + unknown[0]!r}; valid keys under "
                         f"{prefix.rstrip('.') or 'the top level'}: {names}")
    # missing keys take the field defaults (not an instance's values: __post_init__ may derive fields)
    kwargs = {name: _coerce(hints[name], values[name], prefix + name) for name in names if name in values}
    return cls(**kwargs)

def config_to_dict(cfg: Any) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)

    def fix(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: fix(v) for k, v in x.items()}
        if isinstance(x, tuple):
            return list(x)
        return x

    return fix(d)

def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: cannot parse value ({e})") from e
        node = values
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = value
    return values


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A mapping from a ``.json``, ``.yaml`` or ``.yml`` file; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: invalid {'JSON' if path.suffix == '.json' else 'YAML'} ({e})") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


# ---- official configuration files ---------------------------------------------------------------------------
MISSING: Any = object()  # no default: the key is required

_KIND_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
_FOUND_WORDS = {bool: "true/false", str: "a string", list: "a list", dict: "a mapping"}  # shown for a wrong kind


@dataclass(frozen=True)
class Rule:
    """What a value must satisfy beyond its kind: ``text`` completes "must be <kind> <text>"."""

    text: str
    check: Callable[[Any], bool]


def at_least(low: float) -> Rule:
    """``value >= low`` (e.g. ``at_least(1)`` for layers and heads)."""
    return Rule(f">= {low}", lambda v: v >= low)


def between(low: float, high: float) -> Rule:
    """``low <= value <= high`` (e.g. ``between(0, 1)`` for a dropout probability)."""
    return Rule(f"in [{low}, {high}]", lambda v: low <= v <= high)


def one_of(*choices: Any) -> Rule:
    """``value in choices``."""
    return Rule(f"one of {list(choices)}", lambda v: v in choices)


def _as_kind(value: Any, kind: type) -> tuple[bool, Any]:
    """``(ok, value)``: ``value`` read as ``kind`` without coercion (an integral float is an integer, as in
    :func:`config_from_dict`; an int is a number; a bool is never a number)."""
    if kind is bool:
        return isinstance(value, bool), value
    if isinstance(value, bool):
        return False, value
    if kind is int:
        if isinstance(value, int):
            return True, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return False, value
    if kind is float:
        ok = isinstance(value, (int, float)) and math.isfinite(value)
        return ok, float(value) if ok else value
    if kind is str:
        return isinstance(value, str), value
    raise TypeError(f"official_value: kind must be int, float, str or bool, got {kind!r}")


def official_value(cfg: Mapping[str, Any], key: str, kind: type, source: str | os.PathLike,
                   rule: Rule | None = None, default: Any = MISSING, section: str = "") -> Any:
    """``cfg[key]`` checked to be ``kind`` (int, float, str or bool) satisfying ``rule``, or ``default`` when
    the key is absent (``MISSING``: the key is required; a default is returned as given, unchecked).

    Raises :class:`ValueError` naming ``source`` (the file), the key (``section.key``), the value and the rule::

        config.json: key 'num_hidden_layers' must be an integer >= 1, got -3
        config.json: key 'hidden_size' must be an integer >= 1, got '64' (a string)
        config.json: no key 'image_seq_len' (it must be an integer >= 1)
    """
    path = f"{section}.{key}" if section else key
    wanted = _KIND_WORDS.get(kind, getattr(kind, "__name__", str(kind))) + (f" {rule.text}" if rule else "")
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{source}: {section or 'the top level'} must be a mapping, got {type(cfg).__name__}")
    if key not in cfg:
        if default is MISSING:
            raise ValueError(f"{source}: no key {path!r} (it must be {wanted})")
        return default
    raw = cfg[key]
    ok, value = _as_kind(raw, kind)
    if ok and rule is not None:
        ok = bool(rule.check(value))
    if not ok:
        what = next((f" ({w})" for t, w in _FOUND_WORDS.items() if isinstance(raw, t)), "") if kind is not str else ""
        raise ValueError(f"{source}: key {path!r} must be {wanted}, got {raw!r}{what}")
    return value


class OfficialConfig:
    """:func:`official_value` bound to one section of one file::

        g = OfficialConfig(cfg["model"]["generator"], "rar/config.yaml", section="model.generator")
        depth = g.get("num_hidden_layers", int, at_least(1))
        dropout = g.get("dropout", float, between(0, 1), default=0.0)

    ``sub(name)`` reads a nested section (``ValueError`` naming it if it is not a mapping)."""

    def __init__(self, cfg: Mapping[str, Any], source: str | os.PathLike, section: str = "") -> None:
        if not isinstance(cfg, Mapping):
            raise ValueError(f"{source}: {section or 'the top level'} must be a mapping, got {type(cfg).__name__}")
        self.cfg, self.source, self.section = cfg, source, section

    def __contains__(self, key: str) -> bool:
        return key in self.cfg

    def get(self, key: str, kind: type, rule: Rule | None = None, default: Any = MISSING) -> Any:
        return official_value(self.cfg, key, kind, self.source, rule, default, self.section)

    def sub(self, name: str) -> OfficialConfig:
        path = f"{self.section}.{name}" if self.section else name
        if name not in self.cfg:
            raise ValueError(f"{self.source}: no section {path!r}")
        return OfficialConfig(self.cfg[name], self.source, path)
