from dataclasses import dataclass, field

from poisonclip.keys import ADDED_LATER, config_dict, config_hash


@dataclass(frozen=True)
class Before:
    lr: float = 1e-3


@dataclass(frozen=True)
class After:
    lr: float = 1e-3
    trigger: str = field(default="checkerboard", metadata={ADDED_LATER: True})


def test_an_option_added_later_keeps_the_keys_of_existing_configurations():
    assert config_hash(config_dict(After())) == config_hash(config_dict(Before()))
    assert config_dict(After(trigger="blended")) == {"lr": 1e-3, "trigger": "blended"}
    assert config_hash(config_dict(After(trigger="blended"))) != config_hash(config_dict(Before()))
