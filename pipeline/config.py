"""YAML presets with validated ``--set a.b=value`` overrides.

A preset is a nested mapping.  ``config/demo.yaml`` is the *schema*: it lists every key
with its default value, and the type of that default is the type the key accepts.
Other presets (``config/paper.yaml``) name a base with ``inherit: demo.yaml`` and override
some keys.  Unknown keys, wrong types and malformed overrides raise :class:`ConfigError`
with a one-line message (the CLI turns it into exit status 2).

Type rules: an ``int`` default accepts ints; a ``float`` default accepts ints and floats;
``bool`` accepts only booleans; ``str`` accepts strings; ``list`` accepts lists; a
``null`` default accepts anything (used for optional paths).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml


class ConfigError(ValueError):
    """A configuration or usage problem; reported as one line, exit status 2."""


class Config:
    """Read-only attribute view over a nested dict: ``cfg.train.batch_size``."""

    def __init__(self, data: Mapping[str, Any]):
        object.__setattr__(self, "_data", dict(data))

    def __getattr__(self, name: str) -> Any:
        try:
            value = self._data[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None
        return Config(value) if isinstance(value, Mapping) else value

    def __getitem__(self, name: str) -> Any:
        return self.__getattr__(name)

    def __contains__(self, name: str) -> bool:
        return name in self._data

    def __setattr__(self, name, value):
        raise AttributeError("Config is read-only; use --set or with_overrides()")

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name) if name in self._data else default

    def to_dict(self) -> dict:
        return copy.deepcopy(self._data)

    def section(self, name: str) -> dict:
        return copy.deepcopy(self._data[name])

    def with_overrides(self, overrides: Iterable[str]) -> "Config":
        data = self.to_dict()
        for item in overrides:
            key, value = parse_override(item)
            _assign(data, data, key, value)
        return Config(data)

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self._data, sort_keys=True).encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Config({self._data!r})"


def config_dir() -> Path:
    """The folder holding the shipped presets (``config/`` at the repository root)."""
    env = os.environ.get("SLIDERGAN_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "config"


def resolve_preset(path: str | os.PathLike | None) -> Path:
    if path is None:
        return config_dir() / "demo.yaml"
    p = Path(path)
    if p.exists():
        return p
    for cand in (config_dir() / p, config_dir() / f"{p}.yaml"):
        if cand.exists():
            return cand
    raise ConfigError(f"config file not found: {path}")


def _read_yaml(path: Path) -> dict:
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def _load_raw(path: Path, seen: tuple = ()) -> tuple[dict, dict | None]:
    """Return (merged data, schema) for a preset, following ``inherit``."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: circular 'inherit'")
    data = _read_yaml(path)
    base_name = data.pop("inherit", None)
    if base_name is None:
        return data, None
    base_path = (path.parent / base_name) if not os.path.isabs(base_name) else Path(base_name)
    base, _ = _load_raw(base_path, seen + (path,))
    merged = copy.deepcopy(base)
    for key, value in _flatten(data):
        _assign(merged, base, key, value, source=str(path))
    return merged, base


def _flatten(data: Mapping, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            yield from _flatten(v, key + ".")
        else:
            yield key, v


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects key=value, got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _yaml11_float(text: str) -> Any:
    """``text`` as a float when it is one that YAML 1.1 reads as a string (exponent without a
    dot: ``1e-6``); otherwise unchanged, so the type check reports it."""
    try:
        return float(text) if text.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity") else text
    except ValueError:
        return text


def _type_ok(default: Any, value: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str) or value is None
    if isinstance(default, list):
        return isinstance(value, list)
    if isinstance(default, dict):
        return isinstance(value, dict)
    return type(value) is type(default)


def _assign(data: dict, schema: dict, key: str, value: Any, source: str = "--set") -> None:
    parts = key.split(".")
    node, snode = data, schema
    for i, part in enumerate(parts):
        where = ".".join(parts[: i + 1])
        if not isinstance(snode, dict) or part not in snode:
            raise ConfigError(f"{source}: unknown config key {where!r}")
        if i == len(parts) - 1:
            default = snode[part]
            if isinstance(default, dict) and isinstance(value, dict):
                for k, v in _flatten(value):
                    _assign(node[part], default, k, v, source)
                return
            if isinstance(default, float) and isinstance(value, str):
                value = _yaml11_float(value)                        # "1e-6": YAML 1.1 leaves it a string
            if not _type_ok(default, value):
                raise ConfigError(
                    f"{source}: {key} expects {type(default).__name__}, got {value!r}")
            if isinstance(default, float) and isinstance(value, int):
                value = float(value)
            node[part] = value
        else:
            node, snode = node[part], snode[part]


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> Config:
    """Load a preset (default ``config/demo.yaml``), apply ``key=value`` overrides, validate."""
    preset = resolve_preset(path)
    data, _ = _load_raw(preset)
    cfg = Config(data)
    return cfg.with_overrides(list(overrides or ()))


_SCHEMA_CACHE: dict = {}


def schema_section(name: str) -> dict:
    """A copy of section ``name`` of the schema (``config/demo.yaml``): the one place the
    defaults live.  Code that needs a default reads it from here (``fitting.fit.FitOptions``,
    ``fitting.photometric.PhotometricOptions``, ``fitting.photo.fit_settings``) instead of
    keeping a fallback of its own.  Cached per schema file (its path and mtime)."""
    path = resolve_preset(None)
    try:
        key = (str(path.resolve()), path.stat().st_mtime_ns)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    if key not in _SCHEMA_CACHE:
        _SCHEMA_CACHE[key], _ = _load_raw(path)
    data = _SCHEMA_CACHE[key]
    if name not in data or not isinstance(data[name], dict):
        raise ConfigError(f"{path}: no section {name!r}")
    return copy.deepcopy(data[name])


def schema_default(section: str, key: str) -> Any:
    """One default of the schema: ``schema_section(section)[key]`` (ConfigError when absent)."""
    sec = schema_section(section)
    if key not in sec:
        raise ConfigError(f"{resolve_preset(None)}: no key {section}.{key}")
    return sec[key]
