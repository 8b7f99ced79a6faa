"""Reading YAML without YAML 1.1's surprises (issue 21): one meaning per value, or an error naming key and line.

PyYAML implements YAML 1.1, whose implicit types silently change what a config says: `seed: 010` is 8 (octal),
`max_steps: 1:30` is 90 (base 60), `use_peft: yes` and `collapse_detector: off` are booleans, `2024-01-01` is a date,
`1e-4` is a string, and a key written twice keeps its last value without a word. YAML 1.2 (2009), which most other
tools now read, dropped all of these. `load_yaml` reads with the YAML 1.2 core schema on top of PyYAML's safe loader:

  * booleans are true/false only (True/TRUE/False/FALSE too); yes/no/on/off/y/n are strings, as in YAML 1.2: a
    string option such as `collapse_detector: off` then means the word its user wrote, and a boolean option given
    `yes` is refused by the config's own type check, which names the key;
  * numbers are YAML 1.2's: decimal integers, 0x hex, 0o octal, floats with or without a dot (`1e-4`), .inf, .nan;
  * a NUMBER the two versions read differently is an error naming key and line, never a silent choice: an integer
    with a leading zero (`010`: 8 in YAML 1.1, 10 in YAML 1.2; `007` reads 7 in both and passes) and a base-60
    number (`1:30`: 90 in YAML 1.1, the string "1:30" in YAML 1.2). Unlike a word, a wrong number passes every type
    check (8 and 10 are both integers), so either guess would silently be wrong for someone; writing 10 is not;
  * a key repeated in one mapping is an error naming the key and both lines (merge keys `<<` still work: what a
    merge brings in may be overridden, as YAML intends);
  * dates, timestamps and the other YAML 1.1 implicit types are plain strings.

Every failure is a ConfigError of one line: `NAME line N: ...`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from selfrl.errors import ConfigError

_MERGE = "tag:yaml.org,2002:merge"
_AMBIGUOUS = "tag:selfrl:ambiguous-number"  # resolved here only to be refused with a message


class _Ambiguous(Exception):
    """A scalar YAML 1.1 and 1.2 read differently; `where` ("value of 'seed'") is filled in by the innermost mapping
    that holds it."""

    def __init__(self, node, why: str):
        self.node, self.why, self.where = node, why, None


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2's core-schema resolvers and the checks of the module docstring."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.setdefault(key, line)
            except TypeError:  # an unhashable key (a list or mapping): let PyYAML report it
                continue
            if first != line:
                raise ConfigError(f"{self.name} line {line}: key {key!r} repeated (first on line {first}); a repeated "
                                  "key would silently keep its last value")
        try:
            return super().construct_mapping(node, deep=deep)
        except _Ambiguous as e:
            inside = e.node.start_mark.index
            for k, v in node.value if e.where is None else ():
                if v is e.node:
                    e.where = f"value of {k.value!r}"
                elif v.start_mark.index <= inside < v.end_mark.index:
                    e.where = f"an item of {k.value!r}"
            raise


# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution), replacing every YAML 1.1 resolver.
_Loader.yaml_implicit_resolvers = {}
_RESOLVERS = [
    ("tag:yaml.org,2002:bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
    ("tag:yaml.org,2002:int", r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
    ("tag:yaml.org,2002:float", r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)"
                                r"|\.(?:nan|NaN|NAN)", "-+0123456789."),
    ("tag:yaml.org,2002:null", r"~|null|Null|NULL|", ["~", "n", "N", ""]),
    (_MERGE, r"<<", "<"),
    # YAML 1.1's base-60 numbers: 90 there, the string "1:30" in YAML 1.2
    (_AMBIGUOUS, r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?", "-+0123456789"),
]
for _tag, _pattern, _first in _RESOLVERS:
    _Loader.add_implicit_resolver(_tag, re.compile(f"^(?:{_pattern})$"), list(_first))


def _int(loader, node) -> int:
    text = loader.construct_scalar(node)
    digits = text.lstrip("+-")
    if digits[:2] in ("0x", "0o"):
        return int(text, 0)
    try:
        value, old = int(text), yaml.safe_load(text)
    except ValueError:  # past Python's 4300-digit limit on int(str)
        raise yaml.constructor.ConstructorError(None, None, f"integer of {len(digits)} digits is too long",
                                                node.start_mark) from None
    if old != value or type(old) is not int:  # a leading zero: 010 is octal 8 in YAML 1.1, 019 a string
        raise _Ambiguous(node, f"{text} is {old!r} in YAML 1.1 and {value} in YAML 1.2 (a leading zero); "
                               f"write {value}, or quote it if it is text")
    return value


def _sexagesimal(loader, node):
    text = loader.construct_scalar(node)
    raise _Ambiguous(node, f"{text} is a base-60 number in YAML 1.1 ({yaml.safe_load(text)}) and a string in "
                           "YAML 1.2; write the number, or quote it if it is text")


_Loader.add_constructor("tag:yaml.org,2002:int", _int)
_Loader.add_constructor(_AMBIGUOUS, _sexagesimal)


def parse_yaml(text: str, name: str = "<text>") -> object:
    """The value of one YAML document `text` (any type: a --set value is one scalar); errors name `name`."""
    loader = _Loader(text)
    loader.name = name
    loader.deep_construct = True  # build nested values inside their mapping's call, so an error can name the key
    try:
        return loader.get_single_data()
    except _Ambiguous as e:
        raise ConfigError(f"{name} line {e.node.start_mark.line + 1}: {e.where or 'value'}: {e.why}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{name}{where}: not valid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{name}: not valid YAML: {str(e).splitlines()[0]}") from None
    finally:
        loader.dispose()


def load_yaml(source: str | os.PathLike) -> dict:
    """The mapping in a YAML file (a Path or other os.PathLike) or in YAML text (a str); an empty document is {}.
    Anything else (a missing or unreadable file, a list at the top, the cases of the module docstring) is one
    ConfigError line."""
    if isinstance(source, os.PathLike):
        path = Path(source)
        name = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{name}: file not found") from None
        except IsADirectoryError:
            raise ConfigError(f"{name}: is a directory, not a YAML file") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{name}: not UTF-8 text (byte {e.start})") from None
        except OSError as e:
            raise ConfigError(f"{name}: cannot read: {e.strerror}") from None
    else:
        text, name = source, "<text>"
    data = parse_yaml(text, name)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a mapping of keys to values, got {type(data).__name__}")
    return data
