"""The strict YAML reader (selfrl/yamlio.py, issue 21): YAML 1.2's meaning, or one line naming key and line where
YAML 1.1 (PyYAML's default) and YAML 1.2 disagree on a number, and for a repeated key."""
from __future__ import annotations

import math
import re

import pytest
import yaml

from selfrl.errors import ConfigError
from selfrl.yamlio import load_yaml, parse_yaml


def test_yaml_1_2_values():
    text = ("a: yes\nb: off\nc: True\nd: false\ne: 1e-4\nf: 2024-01-01\ng: 0x1F\nh: 0o17\ni: ~\nj: .inf\nk: -5\n"
            "l: 1.5\nm: 007\nn: null\no: '010'\np: 10\nq: 1_000\nr: +3\n")
    assert load_yaml(text) == {
        "a": "yes", "b": "off",  # YAML 1.1's boolean words are strings
        "c": True, "d": False, "e": 1e-4,  # a float needs no dot (YAML 1.1: the string "1e-4")
        "f": "2024-01-01",  # no implicit dates
        "g": 31, "h": 15,  # 0x1F = 16 + 15; 0o17 = 8 + 7
        "i": None, "j": math.inf, "k": -5, "l": 1.5,
        "m": 7,  # 007 is 7 in both versions (octal 7 = decimal 7), so it passes
        "n": None, "o": "010", "p": 10, "q": "1_000", "r": 3,  # quoted stays text; 1_000 is text in YAML 1.2
    }
    assert yaml.safe_load("a: yes\ne: 1e-4\nm: 010")["a"] is True  # what PyYAML alone would have read


@pytest.mark.parametrize("text,message", [
    ("seed: 010\n", "<text> line 1: value of 'seed': 010 is 8 in YAML 1.1 and 10 in YAML 1.2 (a leading zero); "
                    "write 10, or quote it if it is text"),
    ("seed: 019\n", "value of 'seed': 019 is '019' in YAML 1.1 and 19 in YAML 1.2"),  # not octal: text in YAML 1.1
    ("a: 1\nmax_steps: 1:30\n", "<text> line 2: value of 'max_steps': 1:30 is a base-60 number in YAML 1.1 (90) and "
                                "a string in YAML 1.2; write the number, or quote it if it is text"),  # 1*60 + 30
    ("seed: 1\nlr: 2\nseed: 3\n", "<text> line 3: key 'seed' repeated (first on line 1); a repeated key would silently "
                                  "keep its last value"),
    ("rows:\n  - name: a\n    set: {seed: 010}\n", "<text> line 3: value of 'seed': 010"),  # nested: the inner key
    ("grid: [1, 2, 010]\n", "<text> line 1: an item of 'grid': 010"),
    ("rows:\n  - x: 1\n    x: 2\n", "<text> line 3: key 'x' repeated (first on line 2)"),
    ("- 1\n- 2\n", "<text>: expected a mapping of keys to values, got list"),
    ("a: 'open\n", "<text> line 2: not valid YAML: found unexpected end of stream"),
    ("a: !!python/object/apply:os.system [ls]\n", "could not determine a constructor for the tag"),  # safe: no code
    ("a: " + "9" * 5000 + "\n", "<text> line 1: not valid YAML: integer of 5000 digits is too long"),
])
def test_disagreements_and_repeats_are_one_line(text, message):
    with pytest.raises(ConfigError) as e:
        load_yaml(text)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_merge_keys_may_be_overridden():
    # `<<` brings base's keys in; an explicit key beside it overrides one of them: not a repeated key.
    assert load_yaml("base: &b {x: 1, y: 2}\nrun:\n  <<: *b\n  x: 3\n")["run"] == {"x": 3, "y": 2}


def test_files_and_scalars(tmp_path):
    good = tmp_path / "c.yaml"
    good.write_text("seed: 3\n")
    assert load_yaml(good) == {"seed": 3} and load_yaml(tmp_path / "c.yaml") == load_yaml("seed: 3")
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    assert load_yaml(tmp_path / "empty.yaml") == {}
    (tmp_path / "bad.yaml").write_bytes(b"seed: \xff\n")  # byte 6 is not UTF-8
    cases = [(tmp_path / "missing.yaml", "missing.yaml: file not found"), (tmp_path, "is a directory"),
             (tmp_path / "bad.yaml", "bad.yaml: not UTF-8 text (byte 6)")]
    for path, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_yaml(path)
    dup = tmp_path / "dup.yaml"
    dup.write_text("a: 1\na: 2\n")
    with pytest.raises(ConfigError, match=re.escape(f"{dup} line 2: key 'a' repeated")):
        load_yaml(dup)
    # one --set value: any YAML value, with the same rules
    assert parse_yaml("yes") == "yes" and parse_yaml("[1, 2]") == [1, 2] and parse_yaml("1e-3") == 1e-3
    with pytest.raises(ConfigError, match=r"^--set seed line 1: value: 010 is 8 in YAML 1.1"):
        parse_yaml("010", "--set seed")


def test_what_the_config_writes_reads_back_the_same():
    # config.yaml is written by yaml.safe_dump (YAML 1.1), which quotes every string YAML 1.1 would read otherwise
    # ('off', 'yes', '010', '1:30'), so the strict reader gets every value back unchanged.
    from selfrl.grpo_config import Config

    data = {**Config().to_dict(), "tricky": ["off", "yes", "010", "1:30", "2024-01-01", "", "null"], "small": 1e-05}
    assert load_yaml(yaml.safe_dump(data, sort_keys=False)) == data
