"""What an evolved recipe may change, and the built-in mutator (issue 18, methods.md §7).

A recipe is a dict of train-config overrides on top of the search's base config, plus optionally a list of edits to
one user-editable file. The Darwin Gödel Machine's lesson (arXiv 2505.22954, §5 "safety"): variants learn to
defeat whatever measures them, so the measurement must be out of their reach. Here that means:

  * an allow-list, `RECIPE_FIELDS`: the only config fields a search may ever declare mutable. A field added to
    Config later stays out until someone decides it belongs here. Absent on purpose: every field that reads gold
    labels (answer_column, gold_diagnostics, early_stopping_*), sets what is evaluated and how (eval_*, max_steps,
    seed, task, model, train_file), runs the probe gate (probes, probe_tolerance, gate_action) or says where outputs
    go (output_dir, save_*, report_to).
  * `method: oracle` (RL on gold answers) is never a choice;
  * the config's `space:` declares each mutable field's range (low/high, optionally log) or choices, and every
    change, from the built-in mutator or from an LLM, is checked against it before anything runs.
"""
from __future__ import annotations

import math
import random
import typing
from dataclasses import dataclass

from selfrl.grpo_config import Config
from selfrl.errors import ConfigError, SelfRLError

RECIPE_FIELDS = (
    "method", "num_generations", "num_momentum_generations", "num_votes", "prompts_per_step", "temperature",
    "ema_decay", "iqr_filter", "iqr_k", "offline_labels", "curriculum_fraction", "start_votes", "online_filter",
    "online_filter_max_draws", "collapse_detector", "detector_window", "detector_min_signals", "rollback_lr_factor",
    "rollback_ema_decay", "max_rollbacks", "learning_rate", "lr_scheduler_type", "warmup_ratio", "weight_decay",
    "max_grad_norm", "beta", "epsilon", "seed_per_prompt", "use_peft", "lora_r", "lora_alpha", "lora_dropout",
)
LABELLED_METHODS = ("oracle",)  # methods whose reward reads gold answers: never in a search
PATCH_FIELDS = ("train_file",)  # fields that may point at a patched copy of the editable file (see docs/evolve.md)
_HINTS = typing.get_type_hints(Config)


class RecipeError(SelfRLError):
    """A proposed change breaks the schema or the declared ranges: the proposal is rejected, the search goes on."""


def _base_type(name: str) -> type:
    args = [a for a in typing.get_args(_HINTS[name]) if a is not type(None)]
    return args[0] if args else _HINTS[name]


@dataclass(frozen=True)
class Range:
    """One mutable field: numbers in [low, high] (log: sampled in log space), or one of `choices`."""

    name: str
    kind: type  # int, float, bool or str: the Config field's type
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None

    def check(self, value) -> object:
        """The value, coerced to the field's type; RecipeError naming the field when it is out of range."""
        if self.choices is not None:
            if value not in self.choices or isinstance(value, bool) != isinstance(self.choices[0], bool):
                raise RecipeError(f"{self.name}: {value!r} is not one of {list(self.choices)}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{self.name}: expected a number, got {value!r}")
        if self.kind is int and value != int(value):
            raise RecipeError(f"{self.name}: expected an integer, got {value!r}")
        if not math.isfinite(value) or not self.low <= value <= self.high:
            raise RecipeError(f"{self.name}: {value!r} is outside [{self.low}, {self.high}]")
        return int(value) if self.kind is int else float(value)

    def describe(self) -> str:
        if self.choices is not None:
            return f"one of {list(self.choices)}"
        return f"{self.kind.__name__} in [{self.low}, {self.high}]{' (log scale)' if self.log else ''}"


def parse_space(data, where: str) -> dict[str, Range]:
    """`space:` of an evolve config -> {field: Range}; a field outside RECIPE_FIELDS is a ConfigError naming it."""
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{where}: expected a non-empty mapping of field: {{low, high}} or {{choices: [...]}}")
    space = {}
    for name, spec in data.items():
        w = f"{where}.{name}"
        if name not in RECIPE_FIELDS:
            raise ConfigError(f"{w}: not a field a recipe may change (it reads labels, sets the evaluation or the "
                              f"outputs, or is unknown); mutable fields: {', '.join(RECIPE_FIELDS)}")
        if not isinstance(spec, dict) or not (set(spec) <= {"low", "high", "log", "choices"}):
            raise ConfigError(f"{w}: expected {{low: .., high: .., log: ..}} or {{choices: [...]}}, got {spec!r}")
        kind = _base_type(name)
        if "choices" in spec:
            choices = spec["choices"]
            if not isinstance(choices, list) or len(choices) < 2 or set(spec) != {"choices"}:
                raise ConfigError(f"{w}: choices must be a list of at least 2 values, alone")
            if name == "method" and set(choices) & set(LABELLED_METHODS):
                raise ConfigError(f"{w}: 'oracle' reads gold answers; a searched recipe must stay label-free")
            if not all(isinstance(c, kind) and isinstance(c, bool) == (kind is bool) for c in choices):
                raise ConfigError(f"{w}: every choice must be a {kind.__name__}, got {choices!r}")
            space[name] = Range(name, kind, choices=tuple(choices))
            continue
        low, high, log = spec.get("low"), spec.get("high"), spec.get("log", False)
        if kind not in (int, float):
            raise ConfigError(f"{w}: a {kind.__name__} field takes choices: [...], not low/high")
        nums = (low, high)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in nums) \
                or low >= high or not isinstance(log, bool) or (log and low <= 0):
            raise ConfigError(f"{w}: needs finite numbers low < high (and low > 0 with log: true), got {spec!r}")
        if kind is int and not (low == int(low) and high == int(high)):
            raise ConfigError(f"{w}: an integer field needs integer bounds, got {spec!r}")
        space[name] = Range(name, kind, float(low), float(high), log)
    return space


def check_change(change, space: dict[str, Range], parent: dict) -> dict:
    """A proposed {field: value} change, checked field by field against the space; RecipeError when it names a
    field outside it, holds an out-of-range value, or changes nothing."""
    if not isinstance(change, dict) or not change:
        raise RecipeError(f"'set' must be a non-empty object of field: value, got {change!r}")
    out = {}
    for name, value in change.items():
        if name not in space:
            raise RecipeError(f"{name!r} is not a mutable field of this search (mutable: {', '.join(space)})")
        out[name] = space[name].check(value)
    if all(parent.get(k, _MISSING) == v for k, v in out.items()):
        raise RecipeError(f"the change {out} leaves the parent's recipe as it was")
    return out


_MISSING = object()


def recipe_diff(parent: dict, child: dict, base: dict) -> dict:
    """{field: [parent's value, child's value]} for each field the child changed (a field the parent left at the
    base config's value shows that value)."""
    return {k: [parent.get(k, base.get(k)), v] for k, v in sorted(child.items()) if parent.get(k, _MISSING) != v}


def _step(r: Range, current, rng: random.Random) -> object:
    """A new value near `current`: a Gaussian step of a quarter of the range (in log space when `log`), clipped."""
    if r.choices is not None:
        return rng.choice([c for c in r.choices if c != current] or list(r.choices))
    to = (lambda v: math.log(v)) if r.log else (lambda v: v)
    back = (lambda u: math.exp(u)) if r.log else (lambda u: u)
    lo, hi = to(r.low), to(r.high)
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        start = to(min(max(current, r.low), r.high))
    else:  # the base leaves it unset (None): start from the middle of the range
        start = (lo + hi) / 2
    value = back(min(max(start + rng.gauss(0.0, 0.25 * (hi - lo)), lo), hi))
    if r.kind is int:
        return int(min(max(round(value), r.low), r.high))
    return float(f"{value:.4g}")  # 4 significant digits: readable recipes, and YAML round-trips them exactly


def mutate(recipe: dict, base: dict, space: dict[str, Range], rng: random.Random, max_fields: int = 2) -> dict:
    """The built-in mutator: change 1..max_fields fields of the space, each to a new value near its current one.
    Returns the change ({field: value}); pure given `rng`."""
    names = sorted(space)
    for _ in range(100):  # a draw can land on the current value (a clipped step, a 2-choice field); draw again
        picked = rng.sample(names, rng.randint(1, min(max_fields, len(names))))
        change = {n: _step(space[n], recipe.get(n, base.get(n)), rng) for n in picked}
        change = {n: v for n, v in change.items() if recipe.get(n, base.get(n)) != v}
        if change:
            return change
    raise SelfRLError("space: the built-in mutator found no value that differs from the parent's; widen the ranges")


def apply_edits(text: str, edits: list[dict], where: str) -> str:
    """Apply search/replace edits in order; each `find` must occur exactly once in the text it is applied to (the
    DGM coding agent's str_replace rule: an ambiguous edit is refused rather than guessed)."""
    for i, e in enumerate(edits):
        find, replace = e["find"], e["replace"]
        n = text.count(find)
        if n != 1:
            raise RecipeError(f"{where}: edit {i}: 'find' occurs {n} times (must be exactly once)")
        text = text.replace(find, replace)
    return text


def check_edits(edits) -> list[dict]:
    """A list of {"find": non-empty str, "replace": str}; RecipeError otherwise."""
    if not isinstance(edits, list) or not edits:
        raise RecipeError(f"'patch' must be a non-empty list of {{find, replace}} objects, got {edits!r}")
    for i, e in enumerate(edits):
        if not isinstance(e, dict) or set(e) != {"find", "replace"} or not isinstance(e["find"], str) \
                or not e["find"] or not isinstance(e["replace"], str):
            raise RecipeError(f"patch[{i}]: expected {{\"find\": non-empty string, \"replace\": string}}, got {e!r}")
    return [{"find": e["find"], "replace": e["replace"]} for e in edits]
