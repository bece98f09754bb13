"""One training epoch, evaluation, scoring batches and the flow probe (‖θ‖², ‖g‖², L).

Every forward pass divides the logits by the training temperature T (official T = 5):
the training loss of a batch is CE(f(x)/T, y), averaged over the batch; evaluation reports
the same loss (sample-weighted mean) and the top-1 accuracy (unaffected by T).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gfverify import flow
from gfverify.errors import DataError, NonFiniteLossError

Batch = tuple[Tensor, Tensor]
BatchCallback = Callable[[int, Tensor, Tensor], None]


def progress_enabled() -> bool:
    """Progress bars: on when stderr is a TTY, off when ``GFVERIFY_NO_PROGRESS=1``."""
    if os.environ.get("GFVERIFY_NO_PROGRESS", "") not in ("", "0"):
        return False
    return sys.stderr.isatty()


def _bar(iterable: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False, file=sys.stderr)


def autocast_for(precision: str, device: torch.device) -> Callable[[], AbstractContextManager]:
    """A factory of the forward-pass context: bf16 autocast for ``precision == "bf16"``."""
    if precision != "bf16":
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


@dataclass(frozen=True)
class Placement:
    """Where batches go: ``device`` and the floating dtype of the inputs."""

    device: torch.device
    dtype: torch.dtype

    def put(self, x: Tensor, y: Tensor) -> Batch:
        x = x.to(self.device, non_blocking=True)
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        return x, y.to(self.device, non_blocking=True)


def _limited(batches: Iterable[Batch], limit: int | None) -> Iterator[Batch]:
    for k, batch in enumerate(batches):
        if limit is not None and k >= limit:
            return
        yield batch


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    *,
    epoch: int,
    lr: float,
    temperature: float,
    place: Placement,
    num_batches: int,
    max_batches: int | None = None,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    on_batch: BatchCallback | None = None,
    desc: str = "",
    progress: bool = False,
    on_loss: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """One pass of SGD: for each batch, loss = CE(f(x)/T, y), backward, ``optimizer.step()``.

    Sets ``lr`` in every param group first. A non-finite loss raises
    :class:`~gfverify.errors.NonFiniteLossError` naming ``epoch`` and the 1-based batch.
    ``on_batch(k, x, y)`` runs after each step, then ``on_loss(k, minibatch loss)``. Returns
    the sample-weighted mean ``train_loss``, ``train_acc`` and the number of ``train_batches``.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    total = min(num_batches, max_batches) if max_batches else num_batches
    loss_sum = torch.zeros((), dtype=torch.float64, device=place.device)
    correct = torch.zeros((), dtype=torch.long, device=place.device)
    seen = 0
    k = -1
    for k, (x, y) in enumerate(_bar(_limited(batches, max_batches), total, desc, progress)):
        x, y = place.put(x, y)
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float() / temperature, y)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"training loss became {value} at epoch {epoch}, batch {k + 1}"
                f" (lr {lr:g}); the run stopped"
            )
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().double() * len(y)
        correct += (logits.detach().argmax(dim=1) == y).sum()
        seen += len(y)
        if on_batch is not None:
            on_batch(k, x, y)
        if on_loss is not None:
            on_loss(k, value)
    if seen == 0:
        raise DataError(f"epoch {epoch} had no training batches (empty training split?)")
    return {
        "train_loss": float(loss_sum) / seen,
        "train_acc": float(correct) / seen,
        "train_batches": k + 1,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    temperature: float,
    place: Placement,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> tuple[float, float]:
    """(mean CE(f(x)/T, y), top-1 accuracy) over ``batches`` in eval mode (flags restored)."""
    loss_sum, correct, seen = 0.0, 0, 0
    with flow.eval_mode(model):
        for x, y in batches:
            x, y = place.put(x, y)
            with autocast():
                logits = model(x)
            loss_sum += float(F.cross_entropy(logits.float() / temperature, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
            seen += len(y)
    if seen == 0:
        return math.nan, math.nan
    return loss_sum / seen, correct / seen


def scoring_batches(
    batches: Iterable[Batch],
    samples: int,
    place: Placement,
    *,
    num_classes: int | None = None,
    per_class: int = 0,
) -> list[Batch]:
    """Whole batches, in order, until at least ``samples`` samples are taken (the official
    rule, = 20 batches of 128 for 2560) and, if ``per_class > 0``, until every one of
    ``num_classes`` classes has ``per_class`` samples (for the class-balanced Hg measures), or
    the data ends."""
    out: list[Batch] = []
    seen = 0
    counts = torch.zeros(num_classes or 1, dtype=torch.long)
    for x, y in batches:
        out.append(place.put(x, y))
        seen += len(y)
        if per_class > 0 and num_classes:
            counts += torch.bincount(y.cpu(), minlength=num_classes)[:num_classes]
        if seen >= samples and (per_class <= 0 or bool((counts >= per_class).all())):
            break
    return out


@dataclass(frozen=True)
class Probe:
    """Flow quantities at one point: ``theta_sq`` = ‖θ‖² (all trainable parameters),
    ``grad_sq`` = ‖ḡ‖² with ḡ the dataset-averaged gradient of CE(f(x)/T, y) over the scoring
    batches in eval mode (:func:`gfverify.flow.gradient`), ``norm_rate`` = d‖θ‖²/dt = −2θᵀḡ
    under gradient flow (E3), ``loss`` = that loss (NaN when not asked for: it costs one more
    forward pass)."""

    theta_sq: float
    grad_sq: float
    norm_rate: float
    loss: float = math.nan


def probe(
    model: nn.Module, batches: list[Batch], temperature: float, with_loss: bool = False
) -> Probe:
    """:class:`Probe` of ``model`` on ``batches`` (eval-mode BatchNorm, flags restored)."""
    loss = flow.LossSpec("cross_entropy", temperature)
    theta = flow.trainable_params(model)
    g = flow.gradient(model, batches, loss, theta)
    value = float(flow.dataset_loss(model, batches, loss, theta)) if with_loss else math.nan
    return Probe(
        theta_sq=float(sum(float((t.double() ** 2).sum()) for t in theta.values())),
        grad_sq=float(sum(float((t.double() ** 2).sum()) for t in g.values())),
        norm_rate=-2.0 * float(sum(float((theta[k].double() * g[k].double()).sum()) for k in g)),
        loss=value,
    )
