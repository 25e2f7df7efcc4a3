"""Communication-efficient site updates (Konečný et al. 2016): pure numpy encode/decode pairs.

Sketched updates compress a fully trained update (``quantize``, ``subsample``, ``topk``);
structured updates restrict it to a seeded subspace (``lowrank``, ``randmask``). The site calls
:func:`encode_update` and uploads the payload in a weights bundle with
``BundleMeta(codec=..., codec_params=...)``; the server calls :func:`decode_update` with its own
task spec and gets dense float updates back, or a ``CodecError`` saying why not.

No torch here: the aggregator imports this with numpy only.
"""

from __future__ import annotations

from data_specs.update_codecs.codec import Codec
from data_specs.update_codecs.lowrank import lowrank_basis
from data_specs.update_codecs.randmask import randmask_mask
from data_specs.update_codecs.registry import CODECS, decode_update, encode_update, payload_nbytes

__all__ = [
    "CODECS",
    "Codec",
    "decode_update",
    "encode_update",
    "lowrank_basis",
    "payload_nbytes",
    "randmask_mask",
]
