"""Localized editing with zero leakage: change a masked region along the model's trajectories.

    edit(volume, mask, op, model=None, *, method="exact", steps=20, t_edit=None, feather=0, seed=0)
        -> EditResult(volume, report)

Modules: `ops` (``shift:DELTA``, ``scale:FACTOR``, ``inpaint``, ``transplant:PATH``), `region` (mask
checks, feathering), `trajectory` (held exact edit, unheld DDIM baseline), `api` (`edit`).
"""

from medinvert.editing.api import EDIT_METHODS, EditResult, edit, edit_level
from medinvert.editing.ops import DEFAULT_T_EDIT, OP_KINDS, EditOp, parse_op
from medinvert.editing.region import Region, load_mask, make_region

__all__ = ["DEFAULT_T_EDIT", "EDIT_METHODS", "OP_KINDS", "EditOp", "EditResult", "Region", "edit", "edit_level",
           "load_mask", "make_region", "parse_op"]
