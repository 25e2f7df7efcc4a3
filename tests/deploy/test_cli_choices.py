"""CLI choices are enums: a value outside them is refused before anything runs, naming the choices."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from data_specs.constants import DeviceName, LogLevel
from data_specs.parameters.codecs import PARAMS as CODEC_PARAMS
from data_specs.parameters.codecs import CodecConfig
from data_specs.strategy_params import PARAMS as STRATEGY_PARAMS
from data_specs.strategy_params import StrategyConfig, StrategyName
from deploy.cli import app


@pytest.mark.parametrize(
    ("argv", "choices"),
    [
        (["simulate", "m.json", "--strategy", "fedmagic"], ["fedavg", "trimmed_mean"]),
        (["simulate", "m.json", "--partition", "random"], ["natural", "noniid-unequal"]),
        (
            ["site", "adapt", "--experiment", "e", "--manifest", "m.json", "--gate", "tanh"],
            ["softmax", "sigmoid"],
        ),
        (["site", "evaluate", "--split", "train"], ["test", "validation", "training"]),
        (["site", "run", "--device", "tpu"], ["cpu", "cuda", "auto"]),
        (
            ["site", "run", "--log-level", "chatty"],
            ["debug", "info", "warning", "error"],
        ),  # case-insensitive
    ],
)
def test_a_value_outside_the_choices_is_a_usage_error(argv: list[str], choices: list[str]) -> None:
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    for choice in choices:
        assert choice in result.output, (choice, result.output)


def test_device_and_log_level_have_one_definition() -> None:
    """The settings and the CLI take the same enums; a setting outside them is refused alike."""
    from aggregator.settings import AggregatorSettings
    from site_agent.errors import SiteSettingsError
    from site_agent.settings import SiteSettings

    assert SiteSettings.model_fields["device"].annotation is DeviceName
    assert AggregatorSettings.model_fields["log_level"].annotation is LogLevel
    settings = SiteSettings.load(None, device="cpu")
    assert settings.device is DeviceName.CPU
    assert settings.resolve_device() == "cpu"
    assert type(settings.resolve_device()) is str
    with pytest.raises(SiteSettingsError, match="device"):
        SiteSettings.load(None, device="tpu")


def test_the_strategy_enum_names_exactly_the_union_tags() -> None:
    assert {s.value for s in StrategyName} == set(STRATEGY_PARAMS)
    for name in StrategyName:
        assert StrategyConfig(name=name.value).name == name.value


def test_openapi_documents_every_strategy_and_codec_with_its_parameters() -> None:
    strategy = StrategyConfig.model_json_schema()
    assert strategy["discriminator"]["propertyName"] == "name"
    assert set(strategy["discriminator"]["mapping"]) == set(STRATEGY_PARAMS)
    defs = strategy["$defs"]
    assert defs["FedAvgMParams"]["properties"]["momentum"] == {
        "default": 0.9,
        "exclusiveMaximum": 1,
        "minimum": 0,
        "title": "Momentum",
        "type": "number",
    }
    codec = CodecConfig.model_json_schema()
    assert set(codec["discriminator"]["mapping"]) == set(CODEC_PARAMS)
    assert codec["$defs"]["QuantizeParams"]["properties"]["bits"]["enum"] == [1, 2, 4, 8]
