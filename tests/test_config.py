"""Config: paper defaults, YAML ← --set layering, and one-line errors that name the field (style.md item 4)."""
import pytest

from selfrl.grpo_config import Config, load_config
from selfrl.errors import ConfigError


def config_error(path=None, sets=None) -> str:
    """The ConfigError message load_config raises; checks that it is one line."""
    with pytest.raises(ConfigError) as info:
        load_config(path, sets)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_the_paper_values():
    # methods.md §1, M-GRPO paper: 8 prompts × G = 32, T = 1.1, AdamW lr 1e-6, cosine, warm-up 0.1, KL 0.005,
    # clip 0.2, m = 0.99, k = 0.75, N = G/4 = 8 momentum rollouts.
    cfg = load_config(None)
    assert cfg == Config()
    assert (cfg.method, cfg.num_generations, cfg.prompts_per_step) == ("mgrpo", 32, 8)
    assert cfg.temperature == 1.1
    assert cfg.learning_rate == 1e-6
    assert cfg.beta == 0.005
    assert cfg.epsilon == 0.2
    assert cfg.ema_decay == 0.99
    assert cfg.iqr_k == 0.75
    assert cfg.warmup_ratio == 0.1
    assert cfg.lr_scheduler_type == "cosine"
    assert cfg.max_completion_length == 3072
    assert cfg.n_momentum() == 8


def test_yaml_overrides_and_set_goes_on_top(tmp_path):
    path = write(tmp_path, "num_generations: 16\ntemperature: 0.7\niqr_filter: true\n")
    cfg = load_config(path)
    assert (cfg.num_generations, cfg.temperature, cfg.iqr_filter) == (16, 0.7, True)
    assert cfg.beta == 0.005  # untouched fields keep their defaults
    cfg = load_config(path, ["num_generations=8", "beta=0"])
    assert (cfg.num_generations, cfg.temperature, cfg.beta) == (8, 0.7, 0.0)
    assert isinstance(cfg.beta, float)


def test_empty_yaml_is_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == Config()


def test_exponent_floats(tmp_path):
    # YAML 1.1 reads "1e-4" (no dot) as a string; a float field still takes it, from the file and from --set.
    cfg = load_config(write(tmp_path, "learning_rate: 1e-4\n"))
    assert cfg.learning_rate == 1e-4 and isinstance(cfg.learning_rate, float)
    cfg = load_config(None, ["learning_rate=1e-4"])
    assert cfg.learning_rate == 1e-4 and isinstance(cfg.learning_rate, float)
    # an int literal is accepted for a float field
    assert load_config(None, ["temperature=1"]).temperature == 1.0


def test_unknown_key_names_key_and_source(tmp_path):
    path = write(tmp_path, "num_generation: 16\n")
    msg = config_error(path)
    assert "num_generation" in msg and str(path) in msg
    assert "num_generations" in msg  # the hint
    msg = config_error(None, ["lr=1e-5"])
    assert "'lr'" in msg and "--set" in msg


def test_malformed_set_pair():
    assert "num_generations" in config_error(None, ["num_generations"])


@pytest.mark.parametrize(
    "pair, field",
    [
        ("num_generations=abc", "num_generations"),
        ("num_generations=2.5", "num_generations"),
        ("iqr_filter=maybe", "iqr_filter"),
        ("iqr_filter=1", "iqr_filter"),
        ("temperature=hot", "temperature"),
        ("beta=true", "beta"),
    ],
)
def test_wrong_type_names_the_field(pair, field):
    assert config_error(None, [pair]).startswith(field)


def test_wrong_type_in_yaml_names_the_field(tmp_path):
    assert config_error(write(tmp_path, "num_generations: [1, 2]\n")).startswith("num_generations")
    assert config_error(write(tmp_path, "method: null\n")).startswith("method")


@pytest.mark.parametrize(
    "sets, field",
    [
        (["num_generations=1"], "num_generations"),
        # G = 4, N = 3 leaves 1 policy rollout; N = G leaves none
        (["num_generations=4", "num_momentum_generations=3"], "num_momentum_generations"),
        (["num_momentum_generations=32"], "num_momentum_generations"),
        (["num_momentum_generations=-1"], "num_momentum_generations"),
        (["method=ttrl", "num_votes=16"], "num_votes"),  # 16 votes < 32 generations
        (["method=grpo"], "method"),
        (["lr_scheduler_type=linear"], "lr_scheduler_type"),
        (["ema_decay=1.5"], "ema_decay"),
        (["warmup_ratio=1"], "warmup_ratio"),
        (["learning_rate=0"], "learning_rate"),
        (["dtype=float16"], "dtype"),
    ],
)
def test_invalid_values(sets, field):
    assert config_error(None, sets).startswith(field)


def test_n_momentum():
    assert load_config(None).n_momentum() == 8  # G // 4 = 32 // 4
    assert load_config(None, ["num_generations=10"]).n_momentum() == 2  # 10 // 4
    assert load_config(None, ["num_momentum_generations=4"]).n_momentum() == 4
    for method in ("oracle", "srt", "ttrl"):
        assert load_config(None, [f"method={method}"]).n_momentum() == 0
    # a momentum size is ignored (and not validated against G) outside mgrpo
    assert load_config(None, ["method=srt", "num_momentum_generations=31"]).n_momentum() == 0


def test_ttrl_votes_equal_to_generations_is_fine():
    cfg = load_config(None, ["method=ttrl", "num_votes=32"])
    assert (cfg.num_votes, cfg.num_generations) == (32, 32)


def test_optional_int_accepts_none(tmp_path):
    assert load_config(None, ["eval_limit=5"]).eval_limit == 5
    assert load_config(None, ["eval_limit=5", "eval_limit=none"]).eval_limit is None
    assert load_config(None, ["num_momentum_generations=None"]).num_momentum_generations is None
    cfg = load_config(write(tmp_path, "eval_limit: 7\ntorch_threads: null\n"), ["torch_threads=null"])
    assert (cfg.eval_limit, cfg.torch_threads) == (7, None)


def test_save_round_trips(tmp_path):
    cfg = load_config(None, ["method=ttrl", "num_votes=48", "learning_rate=3e-5", "eval_limit=100", "iqr_filter=true",
                             "model=some/model", "lr_scheduler_type=constant"])
    cfg.save(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    Config().save(tmp_path / "default.yaml")
    assert load_config(tmp_path / "default.yaml") == Config()


def test_missing_file(tmp_path):
    msg = config_error(tmp_path / "nope.yaml")
    assert "nope.yaml" in msg


def test_yaml_not_a_mapping(tmp_path):
    path = write(tmp_path, "- num_generations: 16\n- beta: 0\n")
    msg = config_error(path)
    assert str(path) in msg and "list" in msg


def test_invalid_yaml_is_one_line(tmp_path):
    path = write(tmp_path, "num_generations: [16\nbeta: 0\n")
    assert str(path) in config_error(path)


@pytest.mark.parametrize(
    "pair", ["torch_threads=0", "eval_limit=0", "temperature=inf", "beta=nan", "num_generations=3"]
)
def test_more_invalid_values(pair):
    # num_generations=3 with mgrpo: N = 3 // 4 = 0 momentum rollouts, which would silently be srt.
    with pytest.raises(ConfigError) as e:
        load_config(None, [pair])
    assert pair.split("=")[0] in str(e.value) or "num_momentum_generations" in str(e.value)
    assert "\n" not in str(e.value)


def test_every_numeric_field_has_a_range():
    """-1 is out of range for every int and float field (issue 21: max_grad_norm=-1 used to be accepted and made
    every update climb the loss); each is one line naming the field."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(Config)
    numeric = [f.name for f in dataclasses.fields(Config)
               if {int, float} & ({hints[f.name]} | set(typing.get_args(hints[f.name])))]
    assert len(numeric) > 30
    for name in numeric:
        with pytest.raises(ConfigError, match=f"^{name}: ") as e:
            load_config(None, [f"{name}=-1"])
        assert "\n" not in str(e.value)


def test_sizes_are_derived_once():
    # mgrpo, G = 8: N = 8/4 = 2 momentum, M = 6 trained, pooled G = 6 + 2 = 8
    assert tuple(load_config(None, ["num_generations=8", "prompts_per_step=4"]).sizes()) == (4, 8, 6, 2)
    # ttrl votes over num_votes = 6 policy samples and trains the first num_generations = 4; no momentum
    assert tuple(load_config(None, ["method=ttrl", "num_generations=4", "num_votes=6", "prompts_per_step=4"]).sizes(2)) == (2, 6, 4, 0)


def test_ema_decay_end_is_mgrpos_and_not_beside_the_rollbacks_decay():
    assert load_config(None, ["ema_decay_end=0.999"]).ema_decay_end == 0.999  # mgrpo, the default method
    assert load_config(None, []).ema_decay_end is None  # the paper's constant decay by default
    assert config_error(None, ["method=srt", "ema_decay_end=0.999"]).startswith("ema_decay_end: ")
    assert config_error(None, ["ema_decay_end=0.999", "rollback_ema_decay=0.995"]).startswith("ema_decay_end: ")
    assert config_error(None, ["ema_decay_end=1.5"]).startswith("ema_decay_end")


def test_vote_ties_momentum_needs_mgrpo():
    assert load_config(None, ["vote_ties=momentum"]).vote_ties == "momentum"  # mgrpo, the default method
    msg = config_error(None, ["method=srt", "vote_ties=momentum"])
    assert msg.startswith("vote_ties: ") and "srt" in msg
    assert config_error(None, ["vote_ties=anchor"]).startswith("vote_ties: 'anchor' is not one of policy, momentum")
