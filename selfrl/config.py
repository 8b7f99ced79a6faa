"""The generic config loader every loop uses: defaults <- YAML file <- `--set key=value`, then validated.

Each loop owns one flat dataclass (the RL loop's is selfrl/grpo_config.py's `Config`), with a one-line docstring
under each field and a `validate()` that raises ConfigError naming the first bad field. `load(cls, path, sets)`
serves any such dataclass: a YAML key or --set key that is not a field is an error that names it and suggests the
closest field (nanoGPT's configurator), and every value is checked against the field's annotation.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import typing
from pathlib import Path

import yaml

from selfrl.errors import ConfigError
from selfrl.yamlio import load_yaml, parse_yaml


def _coerce(cls, name: str, value: object) -> object:
    """Check `value` against the field's annotation; accept ints for floats and strings from --set."""
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint)
    if optional and isinstance(value, str) and value.strip().lower() in ("none", "null", "~"):
        value = None  # --set key=null clears an optional field, text fields included
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name}: may not be null")
    if isinstance(value, str) and base is not str:
        value = parse_yaml(value.strip(), f"--set {name}")
    if base is float and isinstance(value, str):  # a float field accepts any float literal
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is bool and not isinstance(value, bool):
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if base is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if not isinstance(value, base):
        raise ConfigError(f"{name}: expected {base.__name__}, got {value!r}")
    return value


def apply_overrides(cfg, overrides: dict, source: str):
    """Return a copy of the dataclass `cfg` with known fields replaced; an unknown key is an error naming it and its
    source, with the closest field name as a suggestion."""
    fields = {f.name for f in dataclasses.fields(cfg)}
    values = {}
    for key, value in overrides.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {key!r} in {source}{hint}")
        values[key] = _coerce(type(cfg), key, value)
    return dataclasses.replace(cfg, **values)


def parse_sets(pairs: list[str]) -> dict:
    """['a=1', 'b=x'] -> {'a': '1', 'b': 'x'}; values are parsed against the field type later."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        out[key.strip()] = value
    return out


def read_yaml_mapping(path: str | Path) -> dict:
    """A YAML file's top-level mapping, read as YAML 1.2 (selfrl/yamlio.py: `010`, `1:30` and repeated keys are
    errors); a missing file, bad YAML or a non-mapping is one ConfigError line."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; give a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    return load_yaml(path)


def load(cls, path: str | Path | None = None, sets: list[str] | None = None):
    """cls() defaults <- YAML file <- --set pairs, then cls.validate()."""
    cfg = cls()
    if path is not None:
        cfg = apply_overrides(cfg, read_yaml_mapping(path), str(path))
    if sets:
        cfg = apply_overrides(cfg, parse_sets(sets), "--set")
    return cfg.validate()


def save(cfg, path: Path) -> None:
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))


def field_docs(cls) -> dict[str, str]:
    """Field name -> its one-line docstring (printed by `selfrl config`)."""
    docs, last = {}, None
    for node in ast.parse(inspect.getsource(cls)).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            last = node.target.id
        elif last and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            docs[last] = node.value.value
            last = None
    return docs
