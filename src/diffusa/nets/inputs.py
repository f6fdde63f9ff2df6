"""How a network reads its conditioning (diffusa.cond.Cond): the fields it supports, an error for any other.

Networks raise ValueError here; the pipeline layer above turns user requests into a valid Cond.
"""

from __future__ import annotations

from typing import Any

import torch

from diffusa.cond import Cond, as_cond


def read_cond(cond: Any, supported: set[str], network: str) -> Cond | None:
    """`as_cond(cond)`, None when it holds nothing; a ValueError naming any field outside `supported`."""
    c = as_cond(cond)
    if c is None:
        return None
    fields = set(c.present())
    extra = sorted(fields - supported)
    if extra:
        reads = ", ".join(sorted(supported)) or "no conditioning"
        raise ValueError(f"this {network} cannot use cond.{', cond.'.join(extra)}; it reads {reads}")
    return c if fields else None


def labels_or_null(c: Cond | None, num_classes: int, batch: int, device: torch.device) -> torch.Tensor:
    """The class labels of a class-conditional network, the null label `num_classes` where none are given
    (classifier-free guidance's unconditional branch, Ho & Salimans 2021)."""
    if c is not None and c.labels is not None:
        return c.labels
    return torch.full((batch,), num_classes, dtype=torch.long, device=device)


__all__ = ["labels_or_null", "read_cond"]
