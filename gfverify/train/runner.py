"""``run_training(config, run)``: the prune-while-training loop (the train_fn of
:func:`gfverify.runs.execute`).

Per epoch e (see :mod:`gfverify.train.protocol` for phases and learning rates):

1. one epoch of SGD (momentum, weight decay, logits / T) on the augmented training split,
   at most ``train.max_batches_per_epoch`` batches;
2. evaluation (every ``train.eval_every`` epochs and always at the last epoch): val (if
   ``data.val_fraction > 0``) and test, at logits / T;
3. the scoring batches of epoch e: the first whole batches of a fresh, seeded pass over the
   augmented training data until ≥ ``measure.samples`` samples (plus enough for
   int(samples / C) per class for the Hg measures);
4. ``prune`` epochs: probe ‖θ‖², ‖ḡ‖², L on the scoring batches → scores (or the EMA) →
   plan → surgery → optimizer rebuilt (:mod:`gfverify.train.pruning`) → probe again, and
   the test accuracy right after surgery when evaluating; other epochs: one probe;
5. one metrics line (:meth:`RunDir.log_epoch`), then a checkpoint
   (:mod:`gfverify.train.state`); ``history.json`` after every round.

``probe.enabled`` (:mod:`gfverify.train.probes`, for the statistical claims): a
:class:`~gfverify.train.probes.ProbeRecorder` probes a fixed batch (train-mode BN batch
statistics) after every epoch, around every round and over the first ``probe.steps`` SGD steps
after it, and runs the S3 study in unpruned runs; ``probes.json`` is written after every epoch
and the recorder's state rides in the checkpoint. In a probed run the ``prune_*_before/after``
metrics are those probe-batch values, and the per-epoch eval-mode probe of step 4 (and its
scoring batches) is skipped. A ``one_shot`` run of ratio 0 is a control arm: its round scores
nothing and removes nothing (:func:`gfverify.train.protocol.num_rounds`).

``measure.use_init``: θ⁰ is the model at the start of the run (after ``train.pretrained``);
a copy of it goes through the same surgery every round, so θ − θ⁰ is always defined (on
resume: rebuilt with the same seed and the history replayed).

The result reports the FINAL epoch's test accuracy. The best epoch is chosen on the held-out
validation split only, among the ``final``-phase epochs (the pruned architecture is fixed
there), and reported beside it.

Determinism: python, numpy and torch are seeded with ``seed``; on CPU
``torch.use_deterministic_algorithms(True, warn_only=True)``, on CUDA cudnn deterministic
without benchmarking (flags restored on return). On CPU with the same thread count a resumed
run ends with bit-identical weights to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import random
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from gfverify.complexity import count_complexity
from gfverify.config import RunConfig
from gfverify.data import load_datasets, make_loaders
from gfverify.errors import CheckpointError, ModelError
from gfverify.groups import coupled_groups, depthwise_ties, filter_groups
from gfverify.measures import first_batches, get_measure
from gfverify.models import build_model, load_factory
from gfverify.runs import RunDir
from gfverify.surgery import PruningHistory, masked_channels, prune_filters, replay
from gfverify.train import state as ckpt
from gfverify.train.loop import (
    Placement,
    autocast_for,
    evaluate,
    probe,
    progress_enabled,
    scoring_batches,
    train_epoch,
)
from gfverify.train.probes import PROBES_FILE, ProbeRecorder, probe_batch
from gfverify.train.protocol import (
    EpochSpec,
    check_config,
    data_spec,
    epoch_plan,
    make_schedule,
    param_dtype,
    protected_layers,
    resolve_device,
)
from gfverify.train.pruning import (
    PruneSetup,
    ScoreEMA,
    alive_indices,
    apply_round,
    measure_scores,
    plan_round,
)

HISTORY_FILE = "history.json"
EVAL_BATCH_SIZE = 256


def run_training(config: RunConfig, run: RunDir) -> dict[str, Any]:
    """Train (and prune) ``config`` in ``run``, resuming from its checkpoint; return the result
    dict (see :meth:`Trainer.result`). Raises GfverifyError subclasses for bad input,
    :class:`~gfverify.errors.NonFiniteLossError` when the loss diverges."""
    check_config(config)
    device = resolve_device(config.device)
    with _deterministic(device):
        return Trainer(config, run, device).run()


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    prev = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        elif device.type == "cuda":
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeding the legacy global RNG is the point
    torch.manual_seed(seed)


def build_network(config: RunConfig, num_classes: int, in_channels: int = 3) -> nn.Module:
    """The dense model: ``model.factory`` (called with the keyword arguments among num_classes,
    width_mult, input_size, in_channels that it accepts) or the registry's ``model.name``.
    ``in_channels`` (the data's image channels, 1 for Fashion-MNIST) is passed only when not 3."""
    m = config.model
    kwargs = {"num_classes": num_classes, "width_mult": m.width_mult, "input_size": m.input_size}
    if in_channels != 3:
        kwargs["in_channels"] = in_channels
    if m.factory is None:
        return build_model(m.name, **kwargs)
    factory = load_factory(m.factory)
    try:
        params = inspect.signature(factory).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            kwargs = {k: v for k, v in kwargs.items() if k in params}
    except (TypeError, ValueError):
        pass
    try:
        model = factory(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's factory may raise anything
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ModelError(f"model factory {m.factory!r} failed: {reason}") from None
    if not isinstance(model, nn.Module):
        kind = type(model).__name__
        raise ModelError(f"model factory {m.factory!r} returned {kind}, not an nn.Module")
    return model


class Trainer:
    """State of one run between epochs (built fresh or restored from the checkpoint)."""

    def __init__(self, config: RunConfig, run: RunDir, device: torch.device) -> None:
        self.started = time.time()
        self.config, self.run_dir, self.device = config, run, device
        t, m = config.train, config.measure
        self.measure = get_measure(m.name)
        self.plan: list[EpochSpec] = epoch_plan(config)
        seed_everything(config.seed)
        dtype = param_dtype(config.precision)
        self.place = Placement(device, dtype)
        self.autocast = autocast_for(config.precision, device)
        self.progress = progress_enabled()

        datasets = load_datasets(data_spec(config))
        kw = {"seed": config.seed, "eval_batch_size": EVAL_BATCH_SIZE, "device": device}
        self.loaders = make_loaders(datasets, batch_size=t.batch_size, **kw)
        self.scoring = (
            self.loaders.scoring
            if m.batch_size == t.batch_size
            else make_loaders(datasets, batch_size=m.batch_size, **kw).scoring
        )
        self.num_classes = datasets.num_classes
        self.input_shape = datasets.input_shape
        self.prober: ProbeRecorder | None = None
        if config.probe.enabled:
            pc = config.probe
            x, y = probe_batch(datasets.train, pc.samples, device)
            self.prober = ProbeRecorder(
                (x.to(dtype), y),
                t.temperature,
                steps=pc.steps,
                tau_epochs=pc.tau_epochs if config.prune.ratio == 0 else (),
                tau_filters=pc.tau_filters or None,
                tau_dtype=pc.tau_dtype,
                seed=config.seed,
            )

        torch.manual_seed(config.seed)
        model = build_network(config, self.num_classes, self.input_shape[0])
        model = model.to(device=device, dtype=dtype)
        name = config.model.factory or config.model.name
        desc = f"model {name} (width_mult {config.model.width_mult})"
        if t.pretrained:
            ckpt.load_pretrained(model, t.pretrained, desc)
        self.example = torch.zeros((1, *self.input_shape), device=device, dtype=dtype)
        groups = filter_groups(model, self.example)
        widths0 = {n: g.num_filters for n, g in groups.items()}
        coupled = tuple(coupled_groups(model, self.example))
        self.setup = PruneSetup(
            mode=config.prune.resnet_mode if coupled else "full",
            protected=protected_layers(config, list(widths0)),
            coupled=coupled,
            original_widths=widths0,
            floor_by=config.prune.floor,
            schedule=make_schedule(config),
            ties=depthwise_ties(model, groups),
            count_tied_twice=config.prune.count_tied_twice,
        )
        dense = count_complexity(model, self.input_shape)
        self.dense = {"params": dense.params, "macs": dense.macs}
        self.init_model = copy.deepcopy(model) if m.use_init else None
        self.model = model
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=t.lrs[0], momentum=t.momentum, weight_decay=t.weight_decay
        )
        self.history = PruningHistory()
        self.round_info: list[dict[str, Any]] = []
        self.best_val: dict[str, Any] | None = None
        self.seconds_before = 0.0
        self.start_epoch = 0
        self._structure_key: int | None = None
        self._structure: dict[str, Any] = {}
        self._restore()
        run.update_env(
            device_resolved=str(device),
            device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            precision=config.precision,
            num_threads=torch.get_num_threads(),
            deterministic_algorithms=torch.are_deterministic_algorithms_enabled(),
            cudnn_deterministic=bool(torch.backends.cudnn.deterministic),
            resumed_from_epoch=self.start_epoch,
        )

    # ------------------------------------------------------------------ checkpoint / resume

    def _restore(self) -> None:
        run = self.run_dir
        raw = run.load_checkpoint(map_location="cpu")
        if raw is None:
            return
        where = str(run.checkpoint_path)
        state = ckpt.check_checkpoint(raw, where)
        epoch = int(state["epoch"])
        if epoch != run.completed_epochs():
            raise CheckpointError(
                f"checkpoint {where} is at epoch {epoch} but metrics end at epoch"
                f" {run.completed_epochs()}"
            )
        if not 0 <= epoch <= len(self.plan):
            raise CheckpointError(f"checkpoint {where} epoch {epoch} is outside the run's epochs")
        self.history = ckpt.restore_model(self.model, state, self.example, where)
        if self.init_model is not None:
            replay(self.init_model, self.history, self.example)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=self.config.train.lrs[0],
            momentum=self.config.train.momentum,
            weight_decay=self.config.train.weight_decay,
        )
        ckpt.restore_optimizer(self.optimizer, state["optimizer"], where)
        ckpt.set_rng_state(state.get("rng", {}))
        self.round_info = list(state.get("round_info", []))
        if self.prober is not None and state.get("probes") is not None:
            self.prober.state = state["probes"]
        self.best_val = state.get("best_val")
        self.seconds_before = float(state.get("seconds", 0.0))
        self.start_epoch = epoch
        if self.history.rounds:
            run.write_json(HISTORY_FILE, self._history_json())

    def _state(self, epoch: int) -> dict[str, Any]:
        return {
            "format": ckpt.FORMAT,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "history": self.history.to_dict(),
            "round_info": self.round_info,
            "optimizer": self.optimizer.state_dict(),
            "rng": ckpt.rng_state(self.device),
            "best_val": self.best_val,
            "seconds": self.seconds(),
            "dense": self.dense,
            **({"probes": self.prober.state} if self.prober is not None else {}),
        }

    def _history_json(self) -> dict[str, Any]:
        return {
            "mode": self.setup.mode,
            "original_widths": self.setup.original_widths,
            "rounds": self.history.to_dict()["rounds"],
            "info": self.round_info,
        }

    def seconds(self) -> float:
        return self.seconds_before + (time.time() - self.started)

    # ------------------------------------------------------------------ structure metrics

    def structure(self) -> dict[str, Any]:
        """Widths, masked counts, alive filters, pruned fraction, params and MACs (cached
        until the next round)."""
        key = len(self.history.rounds)
        if key != self._structure_key:
            groups = filter_groups(self.model, self.example)
            widths = {n: g.num_filters for n, g in groups.items()}
            masked = masked_channels(self.model)
            alive = sum(len(v) for v in alive_indices(widths, masked).values())
            cx = count_complexity(self.model, self.input_shape)
            total = self.setup.total_original
            self._structure = {
                "widths": widths,
                "masked": {n: len(v) for n, v in masked.items() if n in widths},
                "filters_alive": alive,
                "filters_original": total,
                "pruned_fraction": 1.0 - alive / total,
                "params": cx.params,
                "macs": cx.macs,
            }
            self._structure_key = key
        return dict(self._structure)

    # ------------------------------------------------------------------ epochs

    def _params_init(self) -> dict[str, torch.Tensor] | None:
        if self.init_model is None:
            return None
        return {n: p.detach() for n, p in self.init_model.named_parameters()}

    def _evaluate(self, rec: dict[str, Any], suffix: str = "") -> None:
        T = self.config.train.temperature
        splits = [("test", self.loaders.test)]
        if self.loaders.val is not None and not suffix:
            splits.insert(0, ("val", self.loaders.val))
        for name, loader in splits:
            loss, acc = evaluate(
                self.model,
                loader.epoch_loader(0),
                temperature=T,
                place=self.place,
                autocast=self.autocast,
            )
            rec[f"{name}_loss{suffix}"], rec[f"{name}_acc{suffix}"] = loss, acc

    def _scoring_batches(self, spec: EpochSpec) -> list:
        m = self.config.measure
        per_class = (
            m.samples // self.num_classes
            if spec.phase == "prune" and self.measure.needs == "hg"
            else 0
        )
        return scoring_batches(
            self.scoring.epoch_loader(spec.epoch),
            m.samples,
            self.place,
            num_classes=self.num_classes,
            per_class=per_class,
        )

    def _train(self, spec: EpochSpec) -> tuple[dict[str, Any], ScoreEMA | None]:
        t = self.config.train
        k = self.config.prune.ema_batches
        ema = ScoreEMA(k) if spec.phase == "prune" and k > 0 else None
        on_batch = on_loss = None
        prober = self.prober
        if prober is not None and prober.wants_steps():

            def on_loss(_: int, value: float) -> None:
                if prober.wants_steps():
                    prober.on_step(self.model, value)

        if ema is not None:
            groups = filter_groups(self.model, self.example)
            init = self._params_init()

            def on_batch(_: int, x: torch.Tensor, y: torch.Tensor) -> None:
                ema.update(measure_scores(self.model, self.config, [(x, y)], groups, init))

        stats = train_epoch(
            self.model,
            self.optimizer,
            self.loaders.train.epoch_loader(spec.epoch),
            epoch=spec.epoch,
            lr=spec.lr,
            temperature=t.temperature,
            place=self.place,
            num_batches=len(self.loaders.train),
            max_batches=t.max_batches_per_epoch,
            autocast=self.autocast,
            on_batch=on_batch,
            on_loss=on_loss,
            desc=f"epoch {spec.epoch}/{len(self.plan)} {spec.phase}",
            progress=self.progress,
        )
        return stats, ema

    def _prune(self, spec: EpochSpec, batches: list, ema: ScoreEMA | None, rec: dict) -> None:
        T = self.config.train.temperature
        probe_batches = first_batches(batches, self.config.measure.samples)
        groups = filter_groups(self.model, self.example)
        widths = {n: g.num_filters for n, g in groups.items()}
        if self.prober is None:
            before = probe(self.model, probe_batches, T, with_loss=True)
        else:  # a probed run logs its probe-batch values (train-mode BN, probes.json)
            before = self.prober.before_round(self.model, widths, spec.round)
        if self.config.prune.ratio == 0:  # the one-shot control arm: a round removing nothing
            scores = {n: torch.zeros(g.num_filters) for n, g in groups.items()}
            source = "none"
        elif ema is not None and ema.value is not None:
            scores, source = ema.value, "ema"
        else:
            scores = measure_scores(self.model, self.config, batches, groups, self._params_init())
            source = "scoring_batches"
        masked = masked_channels(self.model)
        rp = plan_round(scores, self.setup, widths, masked, spec.round, self.measure.name)
        record, self.optimizer = apply_round(
            self.model,
            self.optimizer,
            rp.plan,
            self.setup,
            self.example,
            self.history,
            self.config.prune.preserve_momentum,
        )
        if self.init_model is not None:
            prune_filters(self.init_model, dict(rp.plan), self.example, self.setup.mode)
        if self.prober is None:
            after = probe(self.model, probe_batches, T, with_loss=True)
        else:
            cut = {n: w - len(record.removed.get(n, ())) for n, w in widths.items()}
            after = self.prober.after_round(self.model, cut, record.kept_index_map, spec.epoch)
        removed = sum(len(v) for v in record.removed.values())
        n_masked = sum(len(v) for v in record.masked.values())
        info = {
            "round": spec.round,
            "epoch": spec.epoch,
            "scores": source,
            "requested": rp.n_requested,
            "alive_before": rp.alive_before,
            "removed": removed,
            "masked": n_masked,
            "shortfall": rp.shortfall,
            "theta_sq_before": before.theta_sq,
            "theta_sq_after": after.theta_sq,
            "grad_sq_before": before.grad_sq,
            "grad_sq_after": after.grad_sq,
            "norm_rate_before": before.norm_rate,
            "norm_rate_after": after.norm_rate,
            "loss_before": before.loss,
            "loss_after": after.loss,
        }
        self.round_info.append(info)
        self.run_dir.write_json(HISTORY_FILE, self._history_json())
        rec.update({f"prune_{k}": v for k, v in info.items() if k != "epoch"})
        rec.update(theta_sq=after.theta_sq, grad_sq=after.grad_sq, norm_rate=after.norm_rate)

    def _epoch(self, spec: EpochSpec) -> dict[str, Any]:
        t0 = time.time()
        t = self.config.train
        T = t.temperature
        stats, ema = self._train(spec)
        if self.prober is not None:
            self.prober.on_epoch(self.model, spec.epoch)
        rec: dict[str, Any] = {"epoch": spec.epoch, "phase": spec.phase, "lr": spec.lr, **stats}
        evaluating = spec.epoch % t.eval_every == 0 or spec.epoch == len(self.plan)
        if evaluating:
            self._evaluate(rec)
        probed = self.prober is not None and spec.phase != "prune"
        batches = [] if probed else self._scoring_batches(spec)
        if spec.phase == "prune":
            self._prune(spec, batches, ema, rec)
            if evaluating:
                self._evaluate(rec, "_after_prune")
        elif self.prober is None:  # a probed run records its own per-epoch probe (probes.json)
            p = probe(self.model, first_batches(batches, self.config.measure.samples), T)
            rec.update(theta_sq=p.theta_sq, grad_sq=p.grad_sq, norm_rate=p.norm_rate)
        rec.update(self.structure())
        if spec.phase == "final" and "val_acc" in rec:
            if self.best_val is None or rec["val_acc"] > self.best_val["acc"]:
                self.best_val = {"acc": rec["val_acc"], "epoch": spec.epoch}
        rec["epoch_seconds"] = time.time() - t0
        return rec

    def run(self) -> dict[str, Any]:
        if self.prober is not None and self.start_epoch == 0:
            self.prober.maybe_tau(self.model, 0)
        for spec in self.plan[self.start_epoch :]:
            rec = self._epoch(spec)
            if self.prober is not None:
                self.run_dir.write_json(PROBES_FILE, self.prober.state)
            self.run_dir.log_epoch(rec)
            self.run_dir.save_checkpoint(self._state(spec.epoch))
            if self.progress:
                self._print(rec)
        if self.history.rounds:
            self.run_dir.write_json(HISTORY_FILE, self._history_json())
        return self.result()

    def _print(self, rec: dict[str, Any]) -> None:
        parts = [f"epoch {rec['epoch']}/{len(self.plan)} {rec['phase']}", f"lr {rec['lr']:g}"]
        parts.append(f"loss {rec['train_loss']:.4f}")
        if "test_acc" in rec:
            parts.append(f"test {rec['test_acc']:.4f}")
        parts.append(f"pruned {rec['pruned_fraction']:.3f}")
        from tqdm import tqdm  # above any live progress bar (gfverify run's epoch bar)

        tqdm.write("  ".join(parts), file=sys.stderr)

    # ------------------------------------------------------------------ result

    def result(self) -> dict[str, Any]:
        """The run's outcome: final-epoch test accuracy (never best-on-test), best validation
        accuracy among the final-phase epochs and its epoch (only with a validation split),
        final training loss, achieved pruned fraction of filters (masked = pruned), params /
        MACs and their ratios to the dense model, rounds, widths, seconds, config summary."""
        c = self.config
        last = self.run_dir.metrics()[-1]
        out: dict[str, Any] = {
            "final_test_acc": last["test_acc"],
            "final_test_loss": last["test_loss"],
            "final_train_loss": last["train_loss"],
            "final_train_acc": last["train_acc"],
            "final_epoch": last["epoch"],
        }
        if self.loaders.val is not None:
            out["final_val_acc"] = last.get("val_acc")
            out["best_val_acc"] = self.best_val["acc"] if self.best_val else None
            out["best_val_epoch"] = self.best_val["epoch"] if self.best_val else None
        out.update(
            {
                "pruned_fraction": last["pruned_fraction"],
                "target_ratio": c.prune.ratio,
                "filters_alive": last["filters_alive"],
                "filters_original": last["filters_original"],
                "params": last["params"],
                "macs": last["macs"],
                "dense_params": self.dense["params"],
                "dense_macs": self.dense["macs"],
                "params_ratio": last["params"] / self.dense["params"],
                "macs_ratio": last["macs"] / self.dense["macs"],
                "rounds": len(self.history.rounds),
                "shortfall": sum(int(r.get("shortfall", 0)) for r in self.round_info),
                "widths": last["widths"],
                "masked": last["masked"],
                "epochs": len(self.plan),
                "seconds": round(self.seconds(), 3),
                "device_resolved": str(self.device),
                "config_summary": {
                    "data": c.data.name,
                    "model": c.model.factory or c.model.name,
                    "width_mult": c.model.width_mult,
                    "measure": c.measure.name,
                    "ratio": c.prune.ratio,
                    "rounds": c.prune.rounds,
                    "schedule": c.prune.schedule,
                    "mode": self.setup.mode,
                    "floor": c.prune.floor,
                    "preserve_momentum": c.prune.preserve_momentum,
                    "ema_batches": c.prune.ema_batches,
                    "epochs": c.train.epochs,
                    "temperature": c.train.temperature,
                    "seed": c.seed,
                    "precision": c.precision,
                },
            }
        )
        return out
