from dataclasses import dataclass

import pytest

from harness.config import from_dict, option, to_dict
from harness.errors import ConfigError
from harness.learn.settings import TrainConfig
from harness.run.spec import RunSpec


@dataclass
class Demo:
    rate: float = option(0.1, "a rate")
    steps: int = option(3, "steps")
    name: str | None = option(None, "optional name")


def test_round_trip_and_coercion():
    cfg = from_dict(Demo, {"rate": 1, "steps": 4, "name": "x"}, "demo")
    assert cfg == Demo(1.0, 4, "x")
    assert from_dict(Demo, to_dict(cfg), "demo") == cfg
    assert from_dict(Demo, {"rate": "1e-6"}, "demo").rate == 1e-6  # YAML reads 1e-6 as a string


def test_unknown_key_names_place_and_known_keys():
    with pytest.raises(ConfigError, match=r"demo.yaml: unknown key\(s\) stpes; known keys: name, rate, steps"):
        from_dict(Demo, {"stpes": 3}, "demo.yaml")


def test_wrong_type_names_field():
    with pytest.raises(ConfigError, match=r"cfg\.steps: expected an integer, got 2.5"):
        from_dict(Demo, {"steps": 2.5}, "cfg")
    with pytest.raises(ConfigError, match=r"cfg\.rate: expected a number"):
        from_dict(Demo, {"rate": "fast"}, "cfg")
    from harness.sweeps.sweep import TuneConfig

    assert from_dict(TuneConfig, {"metric": "match_utility"}, "cfg").metric == "match_utility"
    with pytest.raises(ConfigError, match=r"cfg\.metric: expected one of tradeoff_score, match_utility, got 'utility'"):
        from_dict(TuneConfig, {"metric": "utility"}, "cfg")


def test_nested_config_and_validation():
    spec = from_dict(RunSpec, {"train": {"lr": 1e-4}}, "spec.yaml")
    assert isinstance(spec.train, TrainConfig) and spec.train.lr == 1e-4
    with pytest.raises(ConfigError, match=r"spec.yaml.train: unknown key\(s\) learning_rate"):
        from_dict(RunSpec, {"train": {"learning_rate": 1e-4}}, "spec.yaml")
    with pytest.raises(ConfigError, match=r"ratio must be in \(0, 1\], got 1.5"):
        from_dict(RunSpec, {"ratio": 1.5}, "spec.yaml")
    with pytest.raises(ConfigError, match=r"ratio must be in \(0, 1\], got 0.0"):
        from_dict(RunSpec, {"ratio": 0}, "spec.yaml")
