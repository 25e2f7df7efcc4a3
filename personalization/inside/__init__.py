"""Inside personalisation: IOP-FL personal models, FedBN, FedProx and Ditto, behind one InsidePolicy."""

from __future__ import annotations

from personalization.inside.ditto import ditto_penalty, ditto_personal_step
from personalization.inside.fedbn import apply_fedbn, fedbn_local_keys
from personalization.inside.fedprox import anchor_params, proximal_term
from personalization.inside.iopfl import update_personal, update_personal_decomposed
from personalization.inside.policy import InsidePolicy
from personalization.inside.store import PersonalModelStore

__all__ = [
    "InsidePolicy",
    "PersonalModelStore",
    "anchor_params",
    "apply_fedbn",
    "ditto_penalty",
    "ditto_personal_step",
    "fedbn_local_keys",
    "proximal_term",
    "update_personal",
    "update_personal_decomposed",
]
