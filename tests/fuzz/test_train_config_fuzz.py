"""Training configs (`TrainConfig.from_yaml`, what `vitkit train --config` and a resumed run
read): garbage, any value for any option, YAML tags that would run code, aliases that expand
to billions and nesting too deep give a valid config or one ConfigError line naming the file."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from vitkit.errors import ConfigError
from vitkit.train.config import TrainConfig

from .harness import damaged, reads_or_refuses
from .valid_files import scratch, train_config_yaml

YAML_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=10),
                         st.sampled_from(["2001-12-14", "0x1F", ".nan", "-.inf", "~", "[1, [2, [3]]]", "{a: 1}",
                                          "!!binary aGVsbG8=", "!!set {a, b}", "1" * 5000, "&a [*a]"]))
OPTIONS = sorted(f.name for f in dataclasses.fields(TrainConfig))


def from_text(text: str | bytes):
    with scratch() as folder:
        path = folder / "config.yaml"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        result = reads_or_refuses(lambda: TrainConfig.from_yaml(path), names=path)
    if not isinstance(result, ConfigError):
        assert isinstance(result, TrainConfig)
        assert result == TrainConfig.from_dict(result.to_dict())
    return result


@given(damaged(train_config_yaml().encode()))
def test_damaged_config_files(data):
    from_text(data)


@given(st.sampled_from(OPTIONS), YAML_SCALARS)
def test_any_value_for_any_option(option, value):
    text = value if isinstance(value, str) and value[:1] in "[{!&" else yaml.safe_dump(value)
    from_text(f"{option}: {text.strip() if not text.startswith('...') else 'null'}\n")


@given(st.sampled_from(["model_options", "augment"]), st.text(max_size=12), YAML_SCALARS)
def test_any_nested_option(section, key, value):
    from_text(yaml.safe_dump({section: {key: value}}))


@given(st.integers(2, 12), st.integers(2, 12))
def test_aliases_that_multiply(width, depth):
    lines = ["a0: &a0 [1, 2]"]
    for level in range(1, depth + 1):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    text = "model_options:\n  extra:\n" + "\n".join("    " + line for line in lines) + "\n"
    result = from_text(text)
    if width ** depth > 100_000:
        assert isinstance(result, ConfigError) and "expands to more than" in str(result)


@pytest.mark.parametrize("text, expected", [
    ("1: 2\n", "unknown training option(s): 1"),                    # ", ".join([1]): TypeError
    ("model_options: {\"\\n\": 1}\n", "unknown model option(s): '\\n'"),  # deep profile: a two-line message
    ("epochs: abc\n", "epochs must be int | None, not 'abc'"),      # int("abc"): ValueError
    ("betas: 5\n", "betas must be tuple[float, float]"),
    ("[" * 10_000, "nested too deeply"),                              # RecursionError in PyYAML
    ("epochs: " + "1" * 5000 + "\n", "not valid YAML"),               # int() of 5000 digits: ValueError
    ("augment: {flip: maybe}\n", "augmentation option flip must be bool"),  # crashed the Trainer later
    ("model_options: {width: wide}\n", "model option width must be int"),
    ("lr: .nan\n", "lr must be float | None"),                        # a NaN learning rate was accepted
])
def test_regressions_train_config(text, expected):
    result = from_text(text)
    assert isinstance(result, ConfigError) and expected in str(result)


def test_regression_billion_laughs():
    # Nine aliases of nine: safe_load shares them, but to_dict() (dataclasses.asdict) and every
    # config.yaml written from it expanded 9**9 values.
    lines = ['l0: &l0 "lol"'] + [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    result = from_text("model_options:\n  extra:\n" + "\n".join("    " + line for line in lines) + "\n")
    assert isinstance(result, ConfigError) and "expands to more than 100,000 values" in str(result)
