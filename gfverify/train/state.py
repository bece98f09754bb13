"""Checkpoint contents, resume and pretrained weights.

A checkpoint (saved every epoch through :meth:`gfverify.runs.RunDir.save_checkpoint`, i.e.
atomically and checksummed) is a dict of tensors, numbers, strings and containers only, so it
loads with ``torch.load(weights_only=True)``::

    format      1
    epoch       last completed epoch
    model       state_dict (channel masks included: ``<bn>.channel_mask.mask``)
    history     PruningHistory.to_dict() (JSON-able; replayed on resume)
    round_info  per-round summaries (JSON-able)
    optimizer   torch.optim.SGD.state_dict()
    rng         {"torch": torch.get_rng_state(), "cuda": [per-device states]}
    best_val    {"acc", "epoch"} or None
    seconds     training seconds so far (all attempts)
    dense       {"params", "macs"} of the unpruned model

The data order is a pure function of (seed, epoch) (:mod:`gfverify.data.loaders`), so no loader
state is stored. Resume = rebuild the dense model from the config (same seed), replay the
history (:func:`gfverify.surgery.load_pruned`), load the states, rebuild the optimizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gfverify import io as gio
from gfverify.errors import CheckpointError
from gfverify.surgery import PruningHistory, load_pruned

FORMAT = 1
_REQUIRED = ("epoch", "model", "history", "optimizer")


def rng_state(device: torch.device) -> dict[str, Any]:
    """The torch RNG states (CPU, and every CUDA device when ``device`` is CUDA)."""
    out: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore :func:`rng_state` (CUDA states only if the device count matches)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = "; ".join(lines[1:] or lines)
    return text[:300] + ("..." if len(text) > 300 else "")


def check_checkpoint(state: Any, where: str) -> dict[str, Any]:
    """``state`` as a dict with the required keys, else CheckpointError naming ``where``."""
    if not isinstance(state, Mapping):
        raise CheckpointError(f"checkpoint {where} is not a dict (got {type(state).__name__})")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {where} lacks {', '.join(map(repr, missing))}")
    if state.get("format", FORMAT) != FORMAT:
        raise CheckpointError(f"checkpoint {where} has format {state['format']!r}, not {FORMAT}")
    return dict(state)


def restore_model(
    model: nn.Module, state: Mapping[str, Any], example: torch.Tensor, where: str
) -> PruningHistory:
    """Replay the checkpoint's pruning history on the freshly built dense ``model`` and load its
    state_dict (CheckpointError if either does not fit the config's model)."""
    try:
        history = PruningHistory.from_dict(state["history"])
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {where}: bad pruning history ({exc})") from None
    try:
        load_pruned(model, history, state["model"], example)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {where} does not match the config: {exc}") from None
    return history


def restore_optimizer(optimizer: torch.optim.Optimizer, state: Any, where: str) -> None:
    """``optimizer.load_state_dict(state)``; a mismatch is a CheckpointError."""
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise CheckpointError(
            f"checkpoint {where}: optimizer state does not fit the model ({_one_line(exc)})"
        ) from None


def _read_weights(path: Path) -> Any:
    with path.open("rb") as fh:
        magic = fh.read(len(gio.CHECKPOINT_MAGIC))
    if magic == gio.CHECKPOINT_MAGIC:
        return gio.load_checkpoint(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors have many types
        raise CheckpointError(
            f"train.pretrained: {path} could not be loaded ({type(exc).__name__}: {_one_line(exc)})"
        ) from None


def pretrained_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The dense state_dict named by ``train.pretrained``: a run directory (its
    ``checkpoint.pt``), a gfverify checkpoint file, or a ``torch.save``d state_dict (also
    ``{"model"|"state_dict"|"net": state_dict}``; a DataParallel ``module.`` prefix is
    stripped). A pruned checkpoint (non-empty history) is refused."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "checkpoint.pt"
    if not p.is_file():
        raise CheckpointError(f"train.pretrained: {p} not found")
    obj = _read_weights(p)
    if isinstance(obj, Mapping) and obj.get("history", {}).get("rounds"):
        raise CheckpointError(
            f"train.pretrained: {p} holds a pruned model ({len(obj['history']['rounds'])}"
            " rounds); start from a dense checkpoint"
        )
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "net"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"train.pretrained: {p} does not contain a state_dict")
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_pretrained(model: nn.Module, path: str | Path, model_desc: str) -> None:
    """Load ``train.pretrained`` into the dense ``model`` (strict); mismatch -> CheckpointError."""
    sd = pretrained_state_dict(path)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"train.pretrained: {path} does not fit {model_desc}: {_one_line(exc)}"
        ) from None
