"""The experiment's latest global model is kept by linking the verified download, not copying it."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from data_specs.task_spec import TaskSpec
from data_specs.weights.bundle import BundleMeta, encode_bundle
from data_specs.weights.unet_layout import unet_layout
from site_agent.clinic.models import ExperimentRecord, save_global
from site_agent.federation.workdir import WorkDir

SPEC = TaskSpec(out_channels=2, channels=(4, 8), strides=(2,), patch_size=(16, 16))


def _download(work: WorkDir) -> Path:
    tensors = {k: np.ones(shape, dtype) for k, (shape, dtype) in unet_layout(SPEC).items()}
    path = work.root / "tasks" / "t1" / "global.safetensors"
    work.write_bytes(path, encode_bundle(tensors, BundleMeta(spec_hash=SPEC.spec_hash(), round=3)))
    return path


def test_the_kept_model_is_the_downloads_inode_and_outlives_the_task_folder(
    tmp_path: Path,
) -> None:
    work = WorkDir(tmp_path / "w")
    download = _download(work)
    data = download.read_bytes()
    save_global(work, "exp-1", 3, SPEC, download)
    kept = work.global_path("exp-1")
    assert os.path.samefile(kept, download)  # linked, not copied
    assert kept.stat().st_mode & 0o777 == 0o600
    download.unlink()  # the task folder is cleaned up after the round
    assert kept.read_bytes() == data
    record = ExperimentRecord.model_validate_json(kept.with_suffix(".json").read_text())
    assert record.round == 3 and record.spec == SPEC
    assert not list(kept.parent.glob(".*.tmp"))


def test_a_file_system_without_hard_links_gets_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = WorkDir(tmp_path / "w")
    download = _download(work)

    def refuse(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(os, "link", refuse)
    save_global(work, "exp-1", 3, SPEC, download)
    kept = work.global_path("exp-1")
    assert kept.read_bytes() == download.read_bytes()
    assert not os.path.samefile(kept, download)
    assert kept.stat().st_mode & 0o777 == 0o600


def test_a_download_already_gone_is_reported_as_missing(tmp_path: Path) -> None:
    work = WorkDir(tmp_path / "w")
    with pytest.raises(FileNotFoundError):
        save_global(work, "exp-1", 3, SPEC, work.root / "tasks" / "gone.safetensors")
