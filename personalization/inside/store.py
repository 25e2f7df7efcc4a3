"""Personal models on a site's disk: one safetensors file per experiment and round, written atomically.

Layout under the store's root (the site work dir's ``personal/``)::

    <experiment_id>/round_<r>.safetensors

Files are written with ``data_specs.files.atomic_writer`` (a crash leaves the previous file) and
read with safetensors only; nothing is ever unpickled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from data_specs.files import atomic_writer
from personalization.errors import PersonalStoreError

_ROUND_FILE = re.compile(r"round_(\d+)\.safetensors")
# An experiment id becomes a folder name: no separators, no "..", no hidden names.
_EXPERIMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
META_PERSONAL = "fedseg_personal"
META_EXPERIMENT = "experiment_id"
META_ROUND = "round"


class PersonalModelStore:
    """Saves and loads a site's personal models per experiment and round.

    Args:
        root: folder of the store; created on first save. Example: ``work_dir / "personal"``.

    Example:
        >>> store = PersonalModelStore(tmp_path / "personal")
        >>> store.save("exp-1", 3, personal)
        >>> round_, state = store.latest("exp-1")
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, experiment_id: str, round_: int) -> Path:
        """Where the personal model of ``experiment_id`` after round ``round_`` lives.

        Args:
            experiment_id: letters, digits, ``_ . -``; no path separators. Example: ``"exp-1"``.
            round_: round number, at least 0. Example: ``3``.

        Raises:
            PersonalStoreError: the id could escape the store's folder, or the round is negative.
        """
        if not _EXPERIMENT_ID.fullmatch(experiment_id) or ".." in experiment_id:
            raise PersonalStoreError(
                f"experiment id must match {_EXPERIMENT_ID.pattern} without '..', got {experiment_id!r}"
            )
        if isinstance(round_, bool) or not isinstance(round_, int) or round_ < 0:
            raise PersonalStoreError(f"round must be an int >= 0, got {round_!r}")
        return self.root / experiment_id / f"round_{round_}.safetensors"

    def save(self, experiment_id: str, round_: int, state: Mapping[str, torch.Tensor]) -> Path:
        """Write a personal model atomically (replacing one of the same round).

        Args:
            experiment_id: the experiment. Example: ``"exp-1"``.
            round_: the round after which this is the personal model. Example: ``3``.
            state: the state dict; tensors are copied to CPU.

        Returns:
            The file written.

        Raises:
            PersonalStoreError: a bad id or round, or tensors safetensors cannot store (shared
                memory between entries).
        """
        path = self.path(experiment_id, round_)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        meta = {META_PERSONAL: "1", META_EXPERIMENT: experiment_id, META_ROUND: str(round_)}
        try:
            data = st_save(tensors, metadata=meta)
        except (RuntimeError, ValueError) as exc:
            raise PersonalStoreError(f"cannot serialise the personal model: {exc}") from exc
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path, mode=0o600) as fh:
            fh.write(data)
        return path

    def load(self, experiment_id: str, round_: int) -> dict[str, torch.Tensor]:
        """Read the personal model of one round (CPU tensors; keys in safetensors' sorted order).

        Args:
            experiment_id: the experiment. Example: ``"exp-1"``.
            round_: the round. Example: ``3``.

        Returns:
            The state dict.

        Raises:
            PersonalStoreError: no such file, not safetensors, or its metadata names another
                experiment or round.
        """
        path = self.path(experiment_id, round_)
        if not path.is_file():
            raise PersonalStoreError(f"no personal model for {experiment_id} round {round_}")
        try:
            with safe_open(path, framework="pt", device="cpu") as fh:
                meta = fh.metadata() or {}
                state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (not a dict)
        except (SafetensorError, OSError, ValueError) as exc:
            raise PersonalStoreError(
                f"{path.name} of {experiment_id} is not readable safetensors"
            ) from exc
        if meta.get(META_EXPERIMENT) != experiment_id or meta.get(META_ROUND) != str(round_):
            raise PersonalStoreError(
                f"{path.name} claims experiment {meta.get(META_EXPERIMENT)!r} round "
                f"{meta.get(META_ROUND)!r}, expected {experiment_id!r} round {round_}"
            )
        return state

    def rounds(self, experiment_id: str) -> list[int]:
        """Rounds with a stored personal model, ascending. Empty when there are none.

        Args:
            experiment_id: the experiment. Example: ``"exp-1"``.
        """
        folder = self.path(experiment_id, 0).parent
        if not folder.is_dir():
            return []
        found = (_ROUND_FILE.fullmatch(p.name) for p in folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def latest(self, experiment_id: str) -> tuple[int, dict[str, torch.Tensor]] | None:
        """The personal model of the highest stored round.

        Args:
            experiment_id: the experiment. Example: ``"exp-1"``.

        Returns:
            ``(round, state)``, or None when nothing is stored for the experiment.

        Raises:
            PersonalStoreError: the newest file is unreadable.
        """
        rounds = self.rounds(experiment_id)
        if not rounds:
            return None
        return rounds[-1], self.load(experiment_id, rounds[-1])

    def prune(self, experiment_id: str, keep: int = 1) -> list[int]:
        """Delete all but the newest ``keep`` rounds of an experiment.

        Args:
            experiment_id: the experiment. Example: ``"exp-1"``.
            keep: how many of the newest rounds to keep, at least 1. Default 1.

        Returns:
            The rounds deleted.
        """
        if keep < 1:
            raise PersonalStoreError(f"prune keeps at least 1 round, got keep={keep}")
        doomed = self.rounds(experiment_id)[:-keep]
        for round_ in doomed:
            self.path(experiment_id, round_).unlink(missing_ok=True)
        return doomed
