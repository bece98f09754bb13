"""Typed run configuration: nested frozen dataclasses whose defaults are the official protocol.

A run is described by one :class:`RunConfig`: ``data``, ``model``, ``measure``, ``prune`` and
``train`` sections plus a few top-level keys. Every field is type-checked and range-checked on
construction (``__post_init__``), so a config built from Python, TOML, ``--set key=value``
overrides or a stored ``config.json`` is validated the same way; errors are
:class:`~gfverify.errors.ConfigError` naming the full dotted key.

Run identity (open_lth convention): ``run_id(config) = sha256(canonical JSON of the identity
fields that differ from their defaults)[:12]``. Adding a new field with a default therefore
leaves every existing run id unchanged. Fields that do not change the result (``device``,
``name``, ``data.root``, ``data.download``, ``data.verify_md5``) are not part of the identity.

TOML layout::

    seed = 0
    [data]
    name = "cifar10"
    [prune]
    ratio = 0.75
    [sweep]                       # only for expand_grid
    "model.name" = ["vgg13", "resnet56"]
    seed = [0, 1, 2]
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import re
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

from gfverify.errors import ConfigError

try:  # Python >= 3.11
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as _toml  # type: ignore[no-redef]
    except ModuleNotFoundError:
        _toml = None  # type: ignore[assignment]

__all__ = [
    "DataConfig",
    "ModelConfig",
    "MeasureConfig",
    "PruneConfig",
    "TrainConfig",
    "RunConfig",
    "load_config",
    "parse_overrides",
    "update_config",
    "config_to_dict",
    "config_from_dict",
    "flatten_config",
    "config_keys",
    "identity_keys",
    "identity_dict",
    "run_id",
    "expand_grid",
]

_RUN_ID_VERSION = 1
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.+\-]+$")


# --------------------------------------------------------------------------------------------
# value checks (each returns None if fine, else a phrase completing "config key 'k' ...")


def _range(lo: float | None = None, hi: float | None = None, lo_open: bool = False):
    def check(v: float) -> str | None:
        ok = (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or v <= hi)
        if ok:
            return None
        left = "(" if lo_open else "["
        return f"must be in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"

    return check


def _identifier(v: str) -> str | None:
    return None if _NAME_RE.match(v) else "must be a non-empty name without spaces"


def _each(check: Callable[[Any], str | None]):
    def each(values: tuple) -> str | None:
        for i, v in enumerate(values):
            msg = check(v)
            if msg:
                return f"entry {i} ({v!r}) {msg}"
        return None

    return each


def _f(default: Any, check: Callable[[Any], str | None] | None = None, identity: bool = True):
    """A dataclass field with a value check and an identity flag (False: not part of run_id)."""
    return field(default=default, metadata={"check": check, "identity": identity})


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; ints are accepted for floats, lists for tuples."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {_describe(value)}")
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(value, str) and value in choices:
            return value
        raise ConfigError(
            f"config key '{key}' must be one of {', '.join(map(repr, choices))}, got {value!r}"
        )
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {_describe(value)}")
        elem = get_args(tp)[0]
        return tuple(_coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"config key '{key}' must be finite, got {value!r}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
    else:  # pragma: no cover - only if a new annotation kind is added without support here
        raise TypeError(f"unsupported config annotation {tp!r} for '{key}'")
    raise ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {_describe(value)}")


class _Section:
    """Mixin: type-coerce and range-check every field on construction, then cross-check."""

    _prefix: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            key = self._prefix + f.name
            value = _coerce(getattr(self, f.name), hints[f.name], key)
            check = f.metadata.get("check")
            if check is not None and value is not None:
                msg = check(value)
                if msg:
                    raise ConfigError(f"config key '{key}' {msg}, got {value!r}")
            object.__setattr__(self, f.name, value)
        self._validate()

    def _validate(self) -> None:
        """Cross-field checks (override in sections)."""


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls)
    return _HINTS[cls]


# --------------------------------------------------------------------------------------------
# the sections


@dataclass(frozen=True)
class DataConfig(_Section):
    """Dataset and loader. ``val_fraction`` of the training set is held out for best-epoch
    selection; the test set is never used for selection."""

    _prefix: ClassVar[str] = "data."

    name: str = _f("cifar10", _identifier)
    root: str = _f("data", identity=False)
    download: bool = _f(False, identity=False)
    normalize: Literal["half", "dataset", "none"] = _f("half")
    augment: bool = _f(True)
    val_fraction: float = _f(0.1, lambda v: None if 0 <= v < 1 else "must be in [0, 1)")
    train_subset: int | None = _f(None, _range(1))
    fast_path: bool = _f(False)
    num_workers: int = _f(2, _range(0))
    verify_md5: bool = _f(True, identity=False)


@dataclass(frozen=True)
class ModelConfig(_Section):
    """Architecture: a registry name, or ``factory="pkg.mod:callable"`` for a user model."""

    _prefix: ClassVar[str] = "model."

    name: str = _f("resnet56", _identifier)
    width_mult: float = _f(1.0, _range(0, lo_open=True))
    input_size: int = _f(32, _range(1))
    factory: str | None = _f(
        None, lambda v: None if _FACTORY_RE.match(v) else "must look like 'pkg.module:callable'"
    )


@dataclass(frozen=True)
class MeasureConfig(_Section):
    """Importance measure. ``temperature=None``: the measure's default (the training temperature
    for gradient measures); ``hg_temperature=None``: 200 for GraSP, 1 for gradient-norm
    preservation (paper §3.5). ``hvp_method``: how Hg is computed (same Hg to rounding;
    ``reverse_over_reverse`` needs less memory). The timed ``auto`` choice is not offered
    here: a run must be bit-reproducible from its config."""

    _prefix: ClassVar[str] = "measure."

    name: str = _f("magnitude", _identifier)
    temperature: float | None = _f(None, _range(0, lo_open=True))
    hg_temperature: float | None = _f(None, _range(0, lo_open=True))
    samples: int = _f(2560, _range(1))
    batch_size: int = _f(128, _range(1))
    include_bn: bool = _f(False)
    use_init: bool = _f(False)
    hvp_method: Literal["reverse_over_forward", "reverse_over_reverse", "forward_over_reverse"] = (
        _f("reverse_over_forward")
    )


@dataclass(frozen=True)
class PruneConfig(_Section):
    """Pruning protocol. ``ratio`` = fraction of filters removed in total; ``thresholds`` are
    cumulative removed fractions, one per round (``schedule="thresholds"`` only).
    ``count_tied_twice``: the official MobileNet quirk (spec §6 item 12): a layer feeding a
    depthwise conv enters the global ranking twice (its duplicate removes nothing but uses up
    the round's budget). Off by default, like the other official quirks (``floor="index"``):
    ``--set prune.count_tied_twice=true`` reproduces the official ranking."""

    _prefix: ClassVar[str] = "prune."

    ratio: float = _f(0.75, _range(0.0, 0.95))
    rounds: int = _f(25, _range(1))
    schedule: Literal["official", "thresholds", "one_shot"] = _f("official")
    thresholds: tuple[float, ...] = _f((), _each(_range(0.0, 0.95, lo_open=True)))
    floor: Literal["importance", "index"] = _f("importance")
    resnet_mode: Literal["paper", "full"] = _f("paper")
    preserve_momentum: bool = _f(False)
    ema_batches: int = _f(0, _range(0))
    count_tied_twice: bool = _f(False)

    def _validate(self) -> None:
        th = self.thresholds
        if self.schedule != "thresholds":
            if th:
                raise ConfigError(
                    f"config key 'prune.thresholds' is only used with prune.schedule='thresholds'"
                    f" (schedule is {self.schedule!r})"
                )
            return
        if not th:
            raise ConfigError(
                "config key 'prune.thresholds' must be non-empty when prune.schedule='thresholds'"
            )
        if any(b <= a for a, b in itertools.pairwise(th)):
            raise ConfigError(f"config key 'prune.thresholds' must increase strictly, got {th!r}")
        if len(th) != self.rounds:
            raise ConfigError(
                f"config key 'prune.thresholds' has {len(th)} entries but"
                f" prune.rounds={self.rounds}"
            )
        if abs(th[-1] - self.ratio) > 1e-9:
            raise ConfigError(
                f"config key 'prune.thresholds' ends at {th[-1]} but prune.ratio={self.ratio};"
                f" set prune.ratio={th[-1]}"
            )


@dataclass(frozen=True)
class TrainConfig(_Section):
    """SGD protocol (paper §3.3). ``lr_epochs`` are the phase lengths *including* the pruning
    rounds and must sum to ``epochs``; logits are divided by ``temperature`` everywhere."""

    _prefix: ClassVar[str] = "train."

    epochs: int = _f(160, _range(1))
    lrs: tuple[float, ...] = _f((0.1, 0.01, 0.001), _each(_range(0, lo_open=True)))
    lr_epochs: tuple[int, ...] = _f((80, 40, 40), _each(_range(0)))
    momentum: float = _f(0.9, lambda v: None if 0 <= v < 1 else "must be in [0, 1)")
    weight_decay: float = _f(1e-4, _range(0))
    batch_size: int = _f(128, _range(1))
    temperature: float = _f(5.0, _range(0, lo_open=True))
    warmup_epochs: int = _f(0, _range(0))
    pretrained: str | None = _f(None)
    max_batches_per_epoch: int | None = _f(None, _range(1))
    eval_every: int = _f(1, _range(1))

    def _validate(self) -> None:
        if not self.lrs:
            raise ConfigError("config key 'train.lrs' must be non-empty")
        if len(self.lrs) != len(self.lr_epochs):
            raise ConfigError(
                f"config key 'train.lr_epochs' has {len(self.lr_epochs)} phases but train.lrs has"
                f" {len(self.lrs)}"
            )
        if sum(self.lr_epochs) != self.epochs:
            raise ConfigError(
                f"config key 'train.lr_epochs' sums to {sum(self.lr_epochs)} but"
                f" train.epochs={self.epochs}"
            )


@dataclass(frozen=True)
class ProbeConfig(_Section):
    """What a run records for the statistical claims (:mod:`gfverify.train.probes`), off by
    default so plain runs are as fast as without it. With ``enabled``: probe L, ‖θ‖², ‖g‖²,
    D1 = −2θᵀg on a fixed batch of the first ``samples`` training images (train-mode BN batch
    statistics) every epoch and around each round, the first ``steps`` SGD steps after a round,
    and, in unpruned runs only (``prune.ratio`` 0: S3 studies the dense net), the S3 study
    (Kendall τ over ``tau_filters`` seeded filters; 0 = all) at ``tau_epochs`` (0 = the
    initialisation) in ``tau_dtype``. All are identity keys: a probed
    run is a different run."""

    _prefix: ClassVar[str] = "probe."

    enabled: bool = _f(False)
    samples: int = _f(512, _range(1))
    steps: int = _f(10, _range(0))
    tau_epochs: tuple[int, ...] = _f((), _each(_range(0)))
    tau_filters: int = _f(64, _range(0))
    tau_dtype: Literal["float32", "float64"] = _f("float32")


@dataclass(frozen=True)
class RunConfig(_Section):
    """One run. ``device`` and ``name`` do not enter the run id."""

    _prefix: ClassVar[str] = ""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    seed: int = _f(0, lambda v: None if 0 <= v < 2**32 else "must be in [0, 2**32)")
    device: str = _f(
        "auto",
        lambda v: None if _DEVICE_RE.match(v) else "must be auto, cpu, mps, cuda or cuda:N",
        identity=False,
    )
    precision: Literal["fp32", "fp64", "bf16"] = _f("fp32")
    name: str = _f("", identity=False)

    def _validate(self) -> None:
        p, t = self.prune, self.train
        if p.ratio > 0 and p.rounds + t.warmup_epochs > t.lr_epochs[0]:
            raise ConfigError(
                f"config key 'prune.rounds' ({p.rounds}) plus train.warmup_epochs"
                f" ({t.warmup_epochs}) exceeds the first lr phase train.lr_epochs[0]"
                f" ({t.lr_epochs[0]})"
            )


# --------------------------------------------------------------------------------------------
# introspection: dotted keys, types, defaults


def _section_fields(cls: type = RunConfig) -> dict[str, type]:
    """Section name -> section class, for the dataclass-typed fields of ``cls``."""
    hints = _hints(cls)
    return {
        f.name: hints[f.name]
        for f in fields(cls)
        if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name])
    }


def _field_table(cls: type = RunConfig) -> dict[str, tuple[Any, dataclasses.Field]]:
    """Dotted key -> (annotation, dataclass field), in declaration order."""
    out: dict[str, tuple[Any, dataclasses.Field]] = {}
    hints = _hints(cls)
    sections = _section_fields(cls)
    for f in fields(cls):
        if f.name in sections:
            sub = sections[f.name]
            sub_hints = _hints(sub)
            for g in fields(sub):
                out[f"{f.name}.{g.name}"] = (sub_hints[g.name], g)
        else:
            out[f.name] = (hints[f.name], f)
    return out


def config_keys() -> list[str]:
    """All dotted config keys, e.g. ``['data.name', ..., 'seed', 'device', ...]``."""
    return list(_field_table())


def identity_keys() -> list[str]:
    """Dotted keys that enter :func:`run_id` (all except device, name and data locations)."""
    return [k for k, (_, f) in _field_table().items() if f.metadata.get("identity", True)]


def _unknown(key: str, candidates: Sequence[str]) -> ConfigError:
    if key in _section_fields():
        return ConfigError(
            f"config key '{key}' is a section; set its fields as '{key}.<field>=value'"
        )
    match = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    if match:
        return ConfigError(f"unknown config key '{key}' (did you mean '{match[0]}'?)")
    section = key.split(".", 1)[0]
    same = [c for c in candidates if c.startswith(section + ".")]
    if same:
        return ConfigError(f"unknown config key '{key}' (valid: {', '.join(same)})")
    return ConfigError(f"unknown config key '{key}'")


def _all_names() -> list[str]:
    return config_keys() + list(_section_fields())


# --------------------------------------------------------------------------------------------
# dict <-> config


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """Nested plain dict (tuples as lists), the inverse of :func:`config_from_dict`."""
    out: dict[str, Any] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = {g.name: _jsonable(getattr(value, g.name)) for g in fields(value)}
        else:
            out[f.name] = _jsonable(value)
    return out


def flatten_config(config: RunConfig) -> dict[str, Any]:
    """Dotted key -> value (tuples kept), e.g. ``{'data.name': 'cifar10', ..., 'seed': 0}``."""
    flat: dict[str, Any] = {}
    for k, v in config_to_dict(config).items():
        if isinstance(v, dict):
            for sk, sv in v.items():
                flat[f"{k}.{sk}"] = tuple(sv) if isinstance(sv, list) else sv
        else:
            flat[k] = tuple(v) if isinstance(v, list) else v
    return flat


def _build(raw: Mapping[str, Any], cls: type = RunConfig) -> Any:
    """Strictly build ``cls`` from a nested mapping: unknown keys rejected, values validated."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a config must be a table/mapping, got {_describe(raw)}")
    sections = _section_fields(cls)
    plain = {f.name for f in fields(cls)} - set(sections)
    names = config_keys() if cls is RunConfig else [f.name for f in fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key in sections:
            sub = sections[key]
            if isinstance(value, sub):
                kwargs[key] = value
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key '{key}' must be a table, got {_describe(value)}")
            sub_names = {g.name for g in fields(sub)}
            for sk in value:
                if sk not in sub_names:
                    raise _unknown(f"{key}.{sk}", names)
            kwargs[key] = sub(**value)
        elif key in plain:
            kwargs[key] = value
        else:
            raise _unknown(str(key), names + list(sections))
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    """Strict inverse of :func:`config_to_dict`; missing keys take their defaults."""
    return _build(data)


# --------------------------------------------------------------------------------------------
# run identity


def _nondefault(obj: Any) -> dict[str, Any]:
    """Identity fields of dataclass ``obj`` that differ from their class defaults (recursive)."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            sub = _nondefault(value)
            if sub:
                out[f.name] = sub
            continue
        if not f.metadata.get("identity", True):
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if value != default or type(value) is not type(default):
            out[f.name] = _jsonable(value)
    return out


def identity_dict(config: RunConfig) -> dict[str, Any]:
    """The nested dict that :func:`run_id` hashes: identity fields that differ from defaults."""
    return _nondefault(config)


def run_id(config: RunConfig) -> str:
    """``sha256(canonical_json({"v": 1, "config": identity_dict(config)}))[:12]``.

    Canonical JSON = sorted keys, no whitespace, tuples as lists. Defaults are omitted, so a new
    field with a default does not change existing ids; ``device``/``name``/data location do not
    enter the hash.
    """
    payload = json.dumps(
        {"v": _RUN_ID_VERSION, "config": identity_dict(config)},
        sort_keys=True,
        separators=(",", ":"),
        allow_nan=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# TOML + overrides


def _read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if _toml is None:  # pragma: no cover
        raise ConfigError("reading TOML needs Python >= 3.11 (tomllib) or the 'tomli' package")
    try:
        with path.open("rb") as fh:
            raw = _toml.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config path {path} is a directory, not a TOML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 TOML"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except _toml.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {path}: {exc}") from None
    if not raw:
        raise ConfigError(
            f"config file {path} sets nothing (it is empty or only comments); it would run the"
            " full default protocol (160 CIFAR-10 epochs). Set at least one key, e.g."
            " `seed = 0`, to run the defaults on purpose"
        )
    return raw


def _is_str_type(tp: Any) -> bool:
    if tp is str:
        return True
    if get_origin(tp) in (Union, types.UnionType):
        return any(_is_str_type(a) for a in get_args(tp))
    return get_origin(tp) is Literal and all(isinstance(a, str) for a in get_args(tp))


def _is_optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def _parse_value(key: str, text: str) -> Any:
    """Parse an override value as a TOML value, type-directed by the field annotation.

    String-typed fields accept bare words (``model.name=vgg13``); optional fields accept the bare
    word ``none`` (TOML has no null).
    """
    table = _field_table()
    if key not in table:
        raise _unknown(key, _all_names())
    tp = table[key][0]
    stripped = text.strip()
    if _is_optional(tp) and stripped.lower() in ("none", "null"):
        return None
    plain_str = tp is str or (_is_optional(tp) and str in get_args(tp))
    if plain_str and not stripped.startswith(("'", '"')):
        return stripped
    try:
        return _toml.loads(f"v = {stripped}")["v"]
    except Exception:  # noqa: BLE001 - any parse failure falls through to the bare-word rule
        if _is_str_type(tp):
            return stripped
        raise ConfigError(
            f"cannot parse value {stripped!r} for config key '{key}' (expects {_type_name(tp)})"
        ) from None


def parse_overrides(overrides: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    """``["train.epochs=2", "prune.thresholds=[0.3,0.5]"]`` -> ``{"train.epochs": 2, ...}``.

    A mapping is passed through (values already parsed). Keys are dotted; values are TOML.
    """
    if isinstance(overrides, Mapping):
        return dict(overrides)
    if isinstance(overrides, str):
        overrides = [overrides]
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if key.startswith("sweep."):
            try:
                out[key] = _toml.loads(f"v = {text.strip()}")["v"]
            except Exception:  # noqa: BLE001
                raise ConfigError(
                    f"cannot parse value {text!r} for '{key}' (expects a TOML list)"
                ) from None
        else:
            out[key] = _parse_value(key, text)
    return out


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    table = _field_table()
    if key not in table:
        raise _unknown(key, _all_names())
    if "." in key:
        section, sub = key.split(".", 1)
        current = raw.get(section)
        if current is None:
            current = raw[section] = {}
        elif not isinstance(current, dict):
            raise ConfigError(f"config key '{section}' must be a table, got {_describe(current)}")
        current[sub] = value
    else:
        raw[key] = value


def _copy_raw(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}


def _with_suffix(exc: ConfigError, suffix: str) -> ConfigError:
    return ConfigError(f"{exc} ({suffix})")


def update_config(config: RunConfig, changes: Mapping[str, Any] | Sequence[str]) -> RunConfig:
    """A new config with dotted-key ``changes`` applied (parsed if given as ``key=value``)."""
    raw = config_to_dict(config)
    for key, value in parse_overrides(changes).items():
        _set_dotted(raw, key, value)
    return _build(raw)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a run config from TOML, then apply ``key=value`` overrides (TOML-parsed values).

    A file with a ``[sweep]`` table describes many runs: use :func:`expand_grid` for it.
    """
    raw = _read_toml(path)
    if "sweep" in raw:
        raise ConfigError(f"{path} has a [sweep] table; expand it with expand_grid / `sweep`")
    parsed = _parse_all(overrides)
    if any(k.startswith("sweep.") for k in parsed):
        raise ConfigError("sweep.* overrides only apply to sweep files (expand_grid)")
    return _materialise(raw, parsed, str(path))


def _parse_all(overrides: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    try:
        return parse_overrides(overrides)
    except ConfigError as exc:
        raise _with_suffix(exc, "in --set overrides") from None


def _materialise(raw: Mapping[str, Any], parsed: Mapping[str, Any], source: str) -> RunConfig:
    work = _copy_raw(raw)
    for key, value in parsed.items():
        _set_dotted(work, key, value)
    try:
        return _build(work)
    except ConfigError as exc:
        where = f"in {source} with --set overrides" if parsed else f"in {source}"
        raise _with_suffix(exc, where) from None


def _flatten_table(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten_table(v, key + "."))
        else:
            out[key] = v
    return out


def expand_grid(
    path: str | Path, overrides: Sequence[str] | Mapping[str, Any] = ()
) -> list[RunConfig]:
    """Expand a TOML file's ``[sweep]`` table (dotted key -> list) into run configs.

    Order: the cartesian product in the table's key order, the first key varying slowest.
    Overrides ``key=value`` apply to every point (and win over the grid);
    ``sweep.<key>=[...]`` replaces or adds a grid axis. Duplicate configs (same run id) are
    dropped, keeping the first. A file without ``[sweep]`` gives one config.
    """
    raw = _read_toml(path)
    sweep_table = raw.pop("sweep", {})
    if not isinstance(sweep_table, Mapping):
        raise ConfigError(f"'sweep' in {path} must be a table of dotted key -> list")
    grid = _flatten_table(sweep_table)
    parsed = _parse_all(overrides)
    fixed: dict[str, Any] = {}
    for key, value in parsed.items():
        if key.startswith("sweep."):
            grid[key[len("sweep.") :]] = value
        else:
            fixed[key] = value
    valid = set(config_keys())
    for key, values in grid.items():
        if key not in valid:
            exc = _unknown(key, _all_names())
            raise ConfigError(f"{exc} in [sweep] of {path}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"[sweep] entry '{key}' in {path} must be a non-empty list")
    keys = list(grid)
    configs: list[RunConfig] = []
    seen: set[str] = set()
    for point in itertools.product(*(grid[k] for k in keys)):
        work = _copy_raw(raw)
        for key, value in zip(keys, point):
            _set_dotted(work, key, value)
        for key, value in fixed.items():
            _set_dotted(work, key, value)
        desc = ", ".join(f"{k}={v!r}" for k, v in zip(keys, point))
        try:
            config = _build(work)
        except ConfigError as exc:
            raise _with_suffix(exc, f"in {path}, grid point {desc or '(base)'}") from None
        rid = run_id(config)
        if rid not in seen:
            seen.add(rid)
            configs.append(config)
    return configs
