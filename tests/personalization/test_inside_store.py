"""PersonalModelStore: safetensors round trip, newest round, atomic replacement, no unpickling."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from data_specs.task_spec import TaskSpec, build_unet
from personalization.errors import PersonalStoreError
from personalization.inside.store import PersonalModelStore


def _state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = build_unet(TaskSpec(channels=(4, 8), strides=(2,))).state_dict()
    state["model.0.conv.unit0.adn.N.num_batches_tracked"] = torch.tensor(seed, dtype=torch.int64)
    return state


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)  # safetensors sorts its keys; load_state_dict does not care
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_round_trip_keeps_keys_values_and_dtypes(tmp_path: Path) -> None:
    store = PersonalModelStore(tmp_path / "personal")
    state = _state(3)
    path = store.save("exp-1", 3, state)
    assert path == tmp_path / "personal" / "exp-1" / "round_3.safetensors"
    loaded = store.load("exp-1", 3)
    _assert_same(loaded, state)
    assert loaded["model.0.conv.unit0.adn.N.num_batches_tracked"].item() == 3
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_latest_is_the_highest_round_numerically(tmp_path: Path) -> None:
    store = PersonalModelStore(tmp_path)
    assert store.latest("exp-1") is None
    for round_ in (2, 10, 1):
        store.save("exp-1", round_, _state(round_))
    store.save("other", 50, _state(50))
    (tmp_path / "exp-1" / ".round_99.safetensors.abc.tmp").write_bytes(b"half")  # a dead temp file
    assert store.rounds("exp-1") == [1, 2, 10]
    found = store.latest("exp-1")
    assert found is not None
    round_, state = found
    assert round_ == 10
    _assert_same(state, _state(10))


def test_a_failing_write_leaves_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = PersonalModelStore(tmp_path)
    old = _state(1)
    path = store.save("exp-1", 4, old)
    before = path.read_bytes()

    def crash(*_args: object, **_kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)  # fails after the new bytes went to the temp file
    with pytest.raises(OSError, match="disk full"):
        store.save("exp-1", 4, _state(2))
    monkeypatch.undo()
    assert path.read_bytes() == before
    _assert_same(store.load("exp-1", 4), old)
    assert sorted(p.name for p in path.parent.iterdir()) == ["round_4.safetensors"]


def test_load_never_unpickles(tmp_path: Path) -> None:
    store = PersonalModelStore(tmp_path)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple:
            return (marker.write_text, ("x",))

    path = store.path("exp-1", 1)
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(PersonalStoreError, match="not readable safetensors"):
        store.load("exp-1", 1)
    with pytest.raises(PersonalStoreError):
        store.latest("exp-1")
    assert not marker.exists()


def test_load_refuses_missing_and_misfiled_models(tmp_path: Path) -> None:
    store = PersonalModelStore(tmp_path)
    with pytest.raises(PersonalStoreError, match="no personal model"):
        store.load("exp-1", 1)
    store.save("exp-1", 1, _state(1))
    os.replace(store.path("exp-1", 1), store.path("exp-1", 2))
    with pytest.raises(PersonalStoreError, match="claims experiment 'exp-1' round '1'"):
        store.load("exp-1", 2)


@pytest.mark.parametrize("bad", ["../escape", "a/b", "", ".hidden", "x..y"])
def test_experiment_ids_cannot_leave_the_store(tmp_path: Path, bad: str) -> None:
    with pytest.raises(PersonalStoreError, match="experiment id"):
        PersonalModelStore(tmp_path).save(bad, 1, _state(0))


def test_negative_round_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PersonalStoreError, match="round"):
        PersonalModelStore(tmp_path).path("exp-1", -1)


def test_prune_keeps_the_newest_rounds(tmp_path: Path) -> None:
    store = PersonalModelStore(tmp_path)
    for round_ in (1, 2, 3, 4):
        store.save("exp-1", round_, {"w": torch.tensor([float(round_)])})
    assert store.prune("exp-1", keep=2) == [1, 2]
    assert store.rounds("exp-1") == [3, 4]
    with pytest.raises(PersonalStoreError, match="keep"):
        store.prune("exp-1", keep=0)
