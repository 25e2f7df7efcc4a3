"""Pre-processed cases cached across rounds: in memory up to a budget, on disk in the work dir.

Reading, resampling and normalising a site's scans is the same work every round; only the
random augmentation differs. ``SiteDataCache`` keeps the finished items of each split (the
``data`` of the dataset ``data_specs.imaging.datasets.build_dataset`` returns) and, for a later task,
wraps them again with a fresh copy of the augmentation pipeline seeded with that task's seed.
The key covers everything that shapes the items: the manifest (its bytes and every scan's size
and modification time), the task spec (its hash: architecture, patch size, normalisation), the
split and its use, and the source of the pre-processing code itself; a change of any of them
is a new key, so a stale entry is never used. On disk, entries are safetensors files (never
pickle) in ``<work dir>/cache/data``; a restarted agent reads them instead of the scans.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from data_specs.files import atomic_write_bytes

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

    from data_specs.manifests.manifest import DatasetManifest

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_CODE_MODULES = (
    "data_specs.imaging.datasets",
    "data_specs.imaging.transforms",
    "data_specs.imaging.imageio",
)
_META_KEY = "fedseg_items"


@dataclass
class CacheStats:
    """Counts of where each requested dataset came from."""

    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0


@dataclass
class _Entry:
    items: list[dict[str, Any]]
    template: Any  # the augmentation pipeline as built, before any random draw
    nbytes: int


def manifest_fingerprint(manifest: DatasetManifest) -> str | None:
    """Content hash of the manifest plus every file's identity, size and modification time.

    Every file of every case counts: each channel of a multi-channel case and the label. A
    file is named by its path as the manifest writes it and identified by ``os.stat`` (device
    and inode of what a symlink points to, size, modification time), so a file replaced,
    rewritten or re-pointed is a miss. The paths are not resolved again each round; the loader
    resolves them, refusing one that leaves the manifest's root, whenever the cache misses.

    Args:
        manifest: the loaded manifest.

    Returns:
        A hex digest, or None when a file cannot be read, or a path is absolute or has ``..``
        (nothing is cached then, and the loader raises its own clear error).
    """
    digest = hashlib.sha256()
    try:
        digest.update(manifest.model_dump_json().encode())
        root = manifest.root
        for split in manifest.declared_splits():
            for case in manifest.iter_cases(split):
                files = case.image_files + ([case.label] if case.label is not None else [])
                for relative in files:
                    pure = PurePosixPath(relative.replace("\\", "/"))
                    if pure.is_absolute() or ".." in pure.parts:
                        return None
                    st = os.stat(root / pure)
                    digest.update(
                        f"{pure}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
                    )
    except (OSError, ValueError):
        return None
    except Exception as exc:  # a manifest without a folder: let the loader say so
        log.debug("manifest fingerprint skipped: %s", type(exc).__name__)
        return None
    return digest.hexdigest()


@functools.cache
def code_fingerprint() -> str:
    """Hash of the pre-processing modules' source: a code change invalidates every entry."""
    import importlib

    digest = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    for name in _CODE_MODULES:
        module = importlib.import_module(name)
        source = getattr(module, "__file__", None)
        if source:
            with contextlib.suppress(OSError):
                digest.update(Path(source).read_bytes())
    return digest.hexdigest()


def cache_key(**parts: Any) -> str:
    """A stable key (hex) over JSON-able parts, e.g. ``manifest=…, spec=…, split=…``."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class SiteDataCache:
    """Datasets of finished items, reused across tasks.

    Args:
        folder: where entries go on disk. Default None (memory only).
        memory_budget_bytes: largest total of cached tensors in memory; the least recently used
            entries leave first. 0 turns the memory tier off. Default 2 GiB.
        max_disk_entries: entries kept on disk (least recently used removed). Default 8.
    """

    def __init__(
        self,
        folder: Path | None = None,
        *,
        memory_budget_bytes: int = 2 << 30,
        max_disk_entries: int = 8,
    ) -> None:
        self.folder = folder
        self.budget = memory_budget_bytes
        self.max_disk_entries = max_disk_entries
        self.stats = CacheStats()
        self._memory: OrderedDict[str, _Entry] = OrderedDict()

    @property
    def memory_bytes(self) -> int:
        """Bytes of tensors held in memory now."""
        return sum(e.nbytes for e in self._memory.values())

    def dataset(
        self,
        key: str,
        *,
        seed: int,
        build: Callable[[], Dataset],
        template: Callable[[], Any],
    ) -> Dataset:
        """The dataset for ``key``, its augmentation seeded with ``seed``.

        Args:
            key: from ``cache_key``; must cover everything but the seed.
            seed: the task's augmentation seed.
            build: builds the dataset from the scans (a miss).
            template: builds the same pipeline over no items (a disk hit needs a fresh one).

        Returns:
            A ``monai.data.Dataset``; the same items for every seed, the augmentation as a
            freshly built dataset with ``seed`` would draw it.
        """
        entry = self._memory.get(key)
        if entry is not None:
            self._memory.move_to_end(key)
            self.stats.memory_hits += 1
            return _wrap(entry, seed)
        items = self._read(key)
        if items is not None:
            try:
                pipeline = copy.deepcopy(getattr(template(), "transform", None))
            except Exception as exc:  # the builder refused an empty split: build for real
                log.info("data cache: no empty pipeline (%s); rebuilding", type(exc).__name__)
            else:
                entry = _Entry(items, pipeline, _nbytes(items))
                self._remember(key, entry)
                self.stats.disk_hits += 1
                return _wrap(entry, seed)
        self.stats.misses += 1
        built = build()
        data = getattr(built, "data", None)
        if isinstance(data, list):
            entry = _Entry(data, copy.deepcopy(getattr(built, "transform", None)), _nbytes(data))
            self._remember(key, entry)
            self._write(key, data)
        return built

    def clear(self) -> None:
        """Forget the memory tier (the disk tier stays)."""
        self._memory.clear()

    # -- tiers ------------------------------------------------------------------------------
    def _remember(self, key: str, entry: _Entry) -> None:
        if entry.nbytes > self.budget:
            return
        self._memory[key] = entry
        while self.memory_bytes > self.budget:
            self._memory.popitem(last=False)

    def _path(self, key: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{key}.safetensors"

    def _read(self, key: str) -> list[dict[str, Any]] | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            items = _decode(path)
            os.utime(path)  # most recently used
        except Exception as exc:  # a torn or foreign file is a miss, then overwritten
            log.warning("data cache entry unreadable (%s); rebuilding", type(exc).__name__)
            return None
        return items

    def _write(self, key: str, items: list[dict[str, Any]]) -> None:
        path = self._path(key)
        if path is None:
            return
        try:
            body = _encode(items)
        except (TypeError, ValueError) as exc:  # items of a shape this cache cannot store
            log.info("data cache: not stored on disk (%s)", exc)
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write_bytes(path, body)
            self._prune()
        except OSError as exc:  # a full disk must not stop training: the cache is optional
            log.warning("data cache: not stored on disk (%s)", exc.strerror)

    def _prune(self) -> None:
        assert self.folder is not None
        files = sorted(self.folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime_ns)
        for stale in files[: max(0, len(files) - self.max_disk_entries)]:
            stale.unlink(missing_ok=True)


def _wrap(entry: _Entry, seed: int) -> Dataset:
    from monai.data import Dataset as MonaiDataset

    pipeline = copy.deepcopy(entry.template)
    reseed = getattr(pipeline, "set_random_state", None)
    if callable(reseed):
        reseed(seed=seed)
    return MonaiDataset(entry.items, transform=pipeline)


def _nbytes(items: list[dict[str, Any]]) -> int:
    import torch

    return sum(
        v.element_size() * v.nelement()
        for item in items
        for v in item.values()
        if isinstance(v, torch.Tensor)
    )


def _encode(items: list[dict[str, Any]]) -> bytes:
    import torch
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    rows: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        row: dict[str, Any] = {"k": list(item), "t": [], "v": {}}
        for name, value in item.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{i}/{name}"] = value.contiguous()
                row["t"].append(name)
            elif isinstance(value, (int, float, str, bool)) or value is None:
                row["v"][name] = value
            else:
                raise TypeError(f"item field {name!r} is a {type(value).__name__}")
        rows.append(row)
    return save(tensors, metadata={_META_KEY: json.dumps(rows)})


def _decode(path: Path) -> list[dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        rows = json.loads((fh.metadata() or {})[_META_KEY])
        items = []
        for i, row in enumerate(rows):
            values = {**row["v"], **{name: fh.get_tensor(f"{i}/{name}") for name in row["t"]}}
            items.append({name: values[name] for name in row["k"]})
        return items
