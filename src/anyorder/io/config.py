"""Typed configuration files: dataclasses from dicts (every key and type checked), dotted overrides, YAML/JSON.

Every config in anyorder (run configs, model configs, sampling configs, the small demo networks) is a
dataclass validated by :func:`config_from_dict`: an unknown key is an error that names the key and
lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, get_type_hints

import yaml

__all__ = ['config_from_dict', 'config_to_dict', 'coerce_value', 'apply_overrides', 'read_config_file']


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
