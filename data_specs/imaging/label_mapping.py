"""Label values as a site stores them -> class indices: ``label_map`` and ``binarize``, at read time.

Masks are stored as people store them: 0/255 PNGs, 1-bit pictures (read as 0/255), inverted
masks (0 = organ). A manifest says how to read them (``"label_map": {"255": 1}``,
``"binarize": true``); the mapping is applied whenever a label is read (``read_image``, the
training chain, ``fedseg data validate``) and never written back to the files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class LabelMapping:
    """How stored label values become class indices.

    ``label_map`` applies first (values it does not name stay as they are), then ``binarize``
    turns every non-zero value into 1.

    Args:
        label_map: stored value -> class index. Example: ``{255: 1}``; inverted masks
            ``{0: 1, 255: 0}``. Default empty.
        binarize: every non-zero value (after ``label_map``) becomes 1. Default False.
    """

    label_map: tuple[tuple[int, int], ...] = ()
    binarize: bool = False

    @classmethod
    def from_manifest(
        cls, label_map: Mapping[str, int] | None, binarize: bool
    ) -> LabelMapping | None:
        """The mapping a manifest declares, or None when it declares none.

        Args:
            label_map: the manifest's ``label_map`` (JSON keys are strings). Example:
                ``{"255": 1}``.
            binarize: the manifest's ``binarize``.
        """
        if not label_map and not binarize:
            return None
        pairs = tuple(sorted((int(k), int(v)) for k, v in (label_map or {}).items()))
        return cls(label_map=pairs, binarize=binarize)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Class indices of a stored label array (a new int32 array of the same shape).

        Args:
            array: integer label values as read. Example: ``np.array([0, 255])``.
        """
        import numpy as np

        values = np.asarray(array)
        out = values.astype(np.int32, copy=True)
        for stored, target in self.label_map:
            out[values == stored] = target  # from the original values: no chains 1->2->3
        if self.binarize:
            out = (out != 0).astype(np.int32)
        return out

    def stored_value(self, class_index: int) -> int:
        """The value a class is stored as, for writing a mask the site's way.

        The first stored value mapping to ``class_index``; with ``binarize`` and no map,
        class 1 is stored as 255 in pictures and 1 elsewhere is the caller's choice, so
        this returns ``class_index`` itself.

        Args:
            class_index: a predicted class. Example: ``1``.
        """
        for stored, target in self.label_map:
            if target == class_index:
                return stored
        return class_index

    def __call__(self, data: Any) -> Any:
        """Apply to a label array or MONAI ``MetaTensor`` in place of its values (a transform)."""
        import numpy as np

        if hasattr(data, "as_tensor"):  # MetaTensor: keep its metadata and trace
            import torch

            mapped = self.apply(data.detach().cpu().numpy())
            data.data = torch.as_tensor(mapped, dtype=data.dtype).to(data.device)
            return data
        return self.apply(np.asarray(data))


def value_histogram(array: np.ndarray, *, limit: int = 8) -> dict[int, int]:
    """Voxel count per label value, the most frequent ``limit`` values in value order.

    Args:
        array: a label array. Example: ``read_image(p, label=True).array``.
        limit: how many values to keep. Default 8.
    """
    import numpy as np

    values, counts = np.unique(np.asarray(array), return_counts=True)
    keep = np.argsort(counts)[::-1][:limit]
    return {int(values[i]): int(counts[i]) for i in sorted(keep, key=lambda i: values[i])}
