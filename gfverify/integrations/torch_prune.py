"""gfverify's per-weight scores for ``torch.nn.utils.prune``.

    scores = importance_scores(model, "snip", batches)
    torch.nn.utils.prune.global_unstructured(
        list(scores), pruning_method=prune.L1Unstructured, importance_scores=scores, amount=0.5)

or in one call, :func:`global_unstructured`. The scores are :func:`gfverify.measures.score`
at weight granularity, for every Conv/Linear weight; lowest pruned first. Torch's
``L1Unstructured`` prunes the smallest |importance|, so signed scores (GraSP) are shifted by
their global minimum, s − min(s) ≥ 0: the same order, hence the same weights pruned. GraSP at
weight granularity is usually wanted with ``hg_params="weights"`` (GraSP's own θ_w ⊙ H_ww g_w).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from gfverify.flow import Batch
from gfverify.measures import score

ParamKey = tuple[nn.Module, str]


def importance_scores(
    model: nn.Module, measure: str, batches: Sequence[Batch], **score_options: Any
) -> dict[ParamKey, Tensor]:
    """``{(module, "weight"): scores}`` for every Conv/Linear weight, non-negative and in the
    order of measure ``measure`` (lowest = pruned first; see the module docstring)."""
    raw = score(model, measure, batches, "weight", **score_options)
    low = min(float(v.min()) for v in raw.values())
    shift = min(low, 0.0)
    return {(model.get_submodule(n), "weight"): (v - shift).detach() for n, v in raw.items()}


def global_unstructured(
    model: nn.Module,
    measure: str,
    batches: Sequence[Batch],
    amount: float | int,
    **score_options: Any,
) -> dict[ParamKey, Tensor]:
    """Prune ``amount`` (a fraction, or a count) of all Conv/Linear weights globally by
    measure ``measure`` with ``torch.nn.utils.prune.global_unstructured`` (masks
    ``weight_mask``, reparametrised ``weight_orig``); returns the scores used."""
    scores = importance_scores(model, measure, batches, **score_options)
    torch_prune.global_unstructured(
        list(scores),
        pruning_method=torch_prune.L1Unstructured,
        importance_scores=scores,
        amount=amount,
    )
    return scores


__all__ = ["global_unstructured", "importance_scores"]
