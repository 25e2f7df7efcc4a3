"""CLI choices are enums: a value outside them is refused before anything runs, naming the choices."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

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
    ],
)
def test_a_value_outside_the_choices_is_a_usage_error(argv: list[str], choices: list[str]) -> None:
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    for choice in choices:
        assert choice in result.output, (choice, result.output)


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
