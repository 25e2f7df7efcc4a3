"""Update codec names and their parameters: one pydantic model each (no numpy here).

``CodecConfig`` (``TrainConfig.codec``) is a discriminated union on ``name``, so the OpenAPI
document lists every codec with its parameters, defaults and ranges. The JSON is the same as
before: ``{"name": "quantize", "params": {"bits": 4}, "min_size": 1024, "downlink_float16":
false}``; ``.name``, ``.params`` (a plain dict, defaults filled in), ``.min_size`` and
``.downlink_float16`` read it. ``data_specs.update_codecs`` checks the ``codec_params`` of an
uploaded bundle against the same models (``PARAMS``).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    model_validator,
)

from data_specs.parameters.rules import ParamRules

_Strict = ConfigDict(extra="forbid")
# int | float: a value given as an integer stays one, so the checksum head of a bundle encoded by
# an earlier version (which kept the numbers as given) is rebuilt byte for byte.
_Fraction = Annotated[int | float, Field(gt=0, le=1)]


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):  # Literal[1, ...] would take True as 1
        raise ValueError("must be 1, 2, 4 or 8")
    return value


def _power_of_two(n: int) -> int:
    if n < 1 or n & (n - 1):
        raise ValueError("must be a power of two")
    return n


class NoParams(ParamRules):
    """Plain float32 updates: no parameters."""

    owner: ClassVar[str] = "codec 'none'"


class QuantizeParams(ParamRules):
    """Stochastic quantisation (``data_specs.update_codecs.quantize``)."""

    owner: ClassVar[str] = "codec 'quantize'"
    bits: Annotated[Literal[1, 2, 4, 8], BeforeValidator(_not_bool)] = 8
    rotate: bool = False
    block: Annotated[
        int, Field(ge=8, le=2**20, description="a power of two"), AfterValidator(_power_of_two)
    ] = 1024


class SubsampleParams(ParamRules):
    """Random subsampling: keep a fraction ``p`` of the entries."""

    owner: ClassVar[str] = "codec 'subsample'"
    p: _Fraction = 0.25


class TopkParams(ParamRules):
    """Largest-magnitude entries with error feedback."""

    owner: ClassVar[str] = "codec 'topk'"
    fraction: _Fraction = 0.01


class LowrankParams(ParamRules):
    """Structured update in a seeded rank-``rank`` subspace."""

    owner: ClassVar[str] = "codec 'lowrank'"
    rank: Annotated[int, Field(ge=1, le=2**16)] = 4


class RandmaskParams(ParamRules):
    """Structured update on a seeded random mask keeping a fraction ``p``."""

    owner: ClassVar[str] = "codec 'randmask'"
    p: _Fraction = 0.25


class _CodecBase(BaseModel):
    model_config = _Strict
    min_size: Annotated[
        int, Field(ge=0, le=1 << 40, description="smaller tensors travel uncompressed")
    ] = 1024
    downlink_float16: Annotated[bool, Field(description="send the global model as float16")] = False


class NoCodec(_CodecBase):
    name: Literal["none"] = "none"
    params: NoParams = Field(default_factory=NoParams)


class QuantizeCodec(_CodecBase):
    name: Literal["quantize"]
    params: QuantizeParams = Field(default_factory=QuantizeParams)


class SubsampleCodec(_CodecBase):
    name: Literal["subsample"]
    params: SubsampleParams = Field(default_factory=SubsampleParams)


class TopkCodec(_CodecBase):
    name: Literal["topk"]
    params: TopkParams = Field(default_factory=TopkParams)


class LowrankCodec(_CodecBase):
    name: Literal["lowrank"]
    params: LowrankParams = Field(default_factory=LowrankParams)


class RandmaskCodec(_CodecBase):
    name: Literal["randmask"]
    params: RandmaskParams = Field(default_factory=RandmaskParams)


AnyCodec = Annotated[
    NoCodec | QuantizeCodec | SubsampleCodec | TopkCodec | LowrankCodec | RandmaskCodec,
    Field(discriminator="name"),
]

PARAMS: dict[str, type[ParamRules]] = {
    "none": NoParams,
    "quantize": QuantizeParams,
    "subsample": SubsampleParams,
    "topk": TopkParams,
    "lowrank": LowrankParams,
    "randmask": RandmaskParams,
}
"""Every codec name with its parameter model."""


class CodecConfig(RootModel[AnyCodec]):
    """Update compression an experiment asks for (see ``data_specs.update_codecs``).

    JSON fields: ``name`` (``none`` for plain float32 updates; a missing name is ``none``),
    ``params`` (that codec's parameters, defaults filled in), ``min_size`` (tensors with fewer
    elements travel uncompressed; default 1024), ``downlink_float16`` (send the global model as
    float16; default false). Example: ``CodecConfig(name="quantize", params={"bits": 4})``.
    """

    root: AnyCodec = Field(default_factory=NoCodec)

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "name" not in data:
            return {**data, "name": "none"}
        return data

    @property
    def name(self) -> str:
        """The codec's registry name. Example: ``"topk"``."""
        return self.root.name

    @property
    def params(self) -> dict[str, Any]:
        """Every parameter, defaults filled in. Example: ``{"fraction": 0.01}``."""
        return self.root.params.model_dump()

    @property
    def min_size(self) -> int:
        """Tensors with fewer elements travel uncompressed."""
        return self.root.min_size

    @property
    def downlink_float16(self) -> bool:
        """Whether the global model goes to the sites as float16."""
        return self.root.downlink_float16
