"""State-dict split/merge, numpy conversion, arithmetic, and norm keys found by module type."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from data_specs.task_spec import TaskSpec, build_unet
from personalization.errors import PersonalizationError, StateDictError
from personalization.state_dict import (
    from_numpy,
    merge_state,
    norm_keys,
    norm_keys_for_spec,
    split_state,
    state_add,
    state_diff,
    to_numpy,
)


class _Trap(nn.Module):
    """Names that a name-pattern search would get wrong, and every norm flavour by type."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.Linear(3, 3)  # called bn, but not a norm layer
        self.body = nn.Sequential(nn.Conv1d(3, 3, 1), nn.BatchNorm1d(3))
        self.inorm = nn.InstanceNorm1d(3, affine=True, track_running_stats=True)
        self.plain_in = nn.InstanceNorm3d(3)  # no affine, no stats: nothing in the state dict
        self.ln = nn.LayerNorm(3)  # not BatchNorm/InstanceNorm
        self.register_buffer("running_mean", torch.zeros(3))  # buffer of the root, not a norm


def _tiny_state() -> dict[str, torch.Tensor]:
    return {
        "conv.weight": torch.randn(4, 2, 3, 3),
        "conv.bias": torch.randn(4),
        "norm.running_var": torch.rand(4).double(),
        "norm.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
    }


def test_error_tree_has_one_root() -> None:
    assert issubclass(StateDictError, PersonalizationError)


def test_norm_keys_by_type_not_name() -> None:
    model = _Trap()
    assert norm_keys(model) == [
        "body.1.weight",
        "body.1.bias",
        "body.1.running_mean",
        "body.1.running_var",
        "body.1.num_batches_tracked",
        "inorm.weight",
        "inorm.bias",
        "inorm.running_mean",
        "inorm.running_var",
        "inorm.num_batches_tracked",
    ]


def test_norm_keys_literal_for_tiny_batch_unet() -> None:
    spec = TaskSpec(channels=(4, 8), strides=(2,), norm="batch")
    prefixes = ["model.0.conv.unit0.adn.N", "model.1.submodule.conv.unit0.adn.N", "model.2.0.adn.N"]
    stats = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert norm_keys_for_spec(spec) == [f"{p}.{s}" for p in prefixes for s in stats]
    # The PReLU beside each norm layer ("...adn.A.weight") and the convolutions stay out.
    model_keys = build_unet(spec).state_dict()
    assert "model.0.conv.unit0.adn.A.weight" in model_keys
    assert "model.0.conv.unit0.adn.A.weight" not in norm_keys_for_spec(spec)


def test_norm_keys_for_spec_returns_fresh_list() -> None:
    spec = TaskSpec(channels=(4, 8), strides=(2,))
    first = norm_keys_for_spec(spec)
    first.clear()
    assert len(norm_keys_for_spec(spec)) == 15


def test_split_then_merge_gives_the_state_back() -> None:
    state = _tiny_state()
    kept, rest = split_state(state, ["norm.running_var", "norm.num_batches_tracked"])
    assert list(kept) == ["norm.running_var", "norm.num_batches_tracked"]
    assert list(rest) == ["conv.weight", "conv.bias"]
    assert kept["norm.running_var"] is state["norm.running_var"]  # no copy
    merged = merge_state(rest | {k: torch.zeros_like(v) for k, v in kept.items()}, kept)
    assert list(merged) == [
        "conv.weight",
        "conv.bias",
        "norm.running_var",
        "norm.num_batches_tracked",
    ]
    for key, value in state.items():
        assert torch.equal(merged[key], value)


def test_split_refuses_unknown_keys_unless_lenient() -> None:
    with pytest.raises(StateDictError, match=r"nope"):
        split_state(_tiny_state(), ["nope"])
    kept, rest = split_state(_tiny_state(), ["nope", "conv.bias"], strict=False)
    assert list(kept) == ["conv.bias"] and len(rest) == 3


def test_merge_replaces_only_override_keys_and_leaves_inputs_alone() -> None:
    base = _tiny_state()
    new_bias = torch.full((4,), 5.0)
    merged = merge_state(base, {"conv.bias": new_bias})
    assert merged["conv.bias"] is new_bias
    assert merged["conv.weight"] is base["conv.weight"]
    assert not torch.equal(base["conv.bias"], new_bias)


def test_merge_refuses_unknown_key_and_shape_and_dtype_mismatch() -> None:
    base = _tiny_state()
    with pytest.raises(StateDictError, match=r"not in the base: extra\.weight"):
        merge_state(base, {"extra.weight": torch.zeros(1)})
    with pytest.raises(StateDictError, match=r"conv\.bias has shape \(4,\) .* \(5,\)"):
        merge_state(base, {"conv.bias": torch.zeros(5)})
    with pytest.raises(StateDictError, match=r"dtype"):
        merge_state(base, {"norm.num_batches_tracked": torch.tensor(1.0)})


def test_to_numpy_is_zero_copy_and_keeps_dtypes() -> None:
    state = _tiny_state()
    arrays = to_numpy(state)
    assert arrays["norm.num_batches_tracked"].dtype == np.int64
    assert arrays["norm.running_var"].dtype == np.float64
    assert arrays["conv.weight"].dtype == np.float32
    arrays["conv.bias"][0] = 123.0
    assert state["conv.bias"][0].item() == 123.0


def test_to_numpy_refuses_bfloat16() -> None:
    with pytest.raises(StateDictError, match="bfloat16"):
        to_numpy({"w": torch.zeros(2, dtype=torch.bfloat16)})


def test_from_numpy_is_zero_copy_in_reference_order() -> None:
    like = _tiny_state()
    arrays = {k: v.numpy().copy() for k, v in reversed(like.items())}
    state = from_numpy(arrays, like=like)
    assert list(state) == list(like)
    assert state["norm.num_batches_tracked"].dtype == torch.int64
    arrays["conv.weight"][0, 0, 0, 0] = -9.0
    assert state["conv.weight"][0, 0, 0, 0].item() == -9.0


def test_from_numpy_copies_what_torch_cannot_wrap() -> None:
    readonly = np.arange(4, dtype=np.float32)
    readonly.flags.writeable = False
    swapped = np.arange(3, dtype=">f4")
    backwards = np.arange(5, dtype=np.float32)[::-1]
    state = from_numpy({"a": readonly, "b": swapped, "c": backwards})
    assert state["a"].tolist() == [0, 1, 2, 3]
    assert state["b"].dtype == torch.float32 and state["b"].tolist() == [0, 1, 2]
    assert state["c"].tolist() == [4, 3, 2, 1, 0]


def test_from_numpy_checks_against_reference() -> None:
    like = _tiny_state()
    arrays = to_numpy(like)
    with pytest.raises(StateDictError, match=r"conv\.bias"):
        from_numpy({k: v for k, v in arrays.items() if k != "conv.bias"}, like=like)
    with pytest.raises(StateDictError, match="shape"):
        from_numpy(arrays | {"conv.bias": np.zeros(3, np.float32)}, like=like)
    with pytest.raises(StateDictError, match="dtype"):
        from_numpy(arrays | {"norm.num_batches_tracked": np.array(7, np.int32)}, like=like)


def test_numpy_round_trip_of_a_real_unet() -> None:
    model = build_unet(TaskSpec(channels=(4, 8), strides=(2,)))
    state = model.state_dict()
    back = from_numpy(to_numpy(state), like=state)
    model.load_state_dict(back)
    for key, value in state.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value)


def test_diff_and_add_are_inverse_including_integer_buffers() -> None:
    a, b = _tiny_state(), _tiny_state()
    b["norm.num_batches_tracked"] = torch.tensor(3, dtype=torch.int64)
    d = state_diff(a, b)
    assert torch.allclose(d["conv.weight"], a["conv.weight"] - b["conv.weight"])
    assert d["norm.num_batches_tracked"].item() == 4
    assert d["norm.running_var"].dtype == torch.float64
    back = state_add(b, d)
    for key in a:
        assert torch.allclose(back[key], a[key], atol=1e-6)
    assert back["norm.num_batches_tracked"].item() == 7


def test_diff_refuses_mismatched_layouts() -> None:
    a = _tiny_state()
    with pytest.raises(StateDictError, match=r"conv\.bias"):
        state_diff(a, {k: v for k, v in a.items() if k != "conv.bias"})
    with pytest.raises(StateDictError, match="boolean"):
        state_diff({"m": torch.ones(2, dtype=torch.bool)}, {"m": torch.ones(2, dtype=torch.bool)})
