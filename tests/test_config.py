import pytest

from tunesmith.config import Config, apply_overrides, config_to_yaml, load_config, parse_override
from tunesmith.errors import ConfigError


def test_defaults_validate_and_round_trip_through_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(config_to_yaml(Config()))
    assert load_config(path) == Config()


@pytest.mark.parametrize("text,expected", [
    ("training.learning_rate=2e-5", (["training", "learning_rate"], 2e-5)),
    ("training.max_steps=10", (["training", "max_steps"], 10)),
    ("training.packing=false", (["training", "packing"], False)),
    ("model.name=some/model", (["model", "name"], "some/model")),
    ("training.lora_target_modules=[q_proj, v_proj]", (["training", "lora_target_modules"], ["q_proj", "v_proj"])),
])
def test_parse_override_reads_values_as_yaml(text, expected):
    assert parse_override(text) == expected


def test_overrides_apply_on_top_of_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  learning_rate: 0.001\n  epochs: 2\n")
    config = load_config(path, ["training.learning_rate=2e-5"])
    assert config.training.learning_rate == 2e-5
    assert config.training.epochs == 2


def test_every_problem_is_reported_with_key_and_value(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  learning_rate: abc\n  batch_size: 0\n  lerning_rate: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "training.learning_rate='abc'" in message
    assert "training.batch_size=0" in message
    assert "unknown key 'training.lerning_rate'" in message
    assert str(path) in message


def test_cross_field_problems_are_collected():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["split.test_size=1.5", "template.name=jinja"])
    assert "split.test_size=1.5" in str(info.value)
    assert "template.jinja" in str(info.value)


def test_set_without_equals_is_a_clear_error():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["training.learning_rate"])


def test_missing_config_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
