"""Typed run config: defaults, TOML + overrides, strict validation, run ids, sweep grids."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import textwrap
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfverify.config import (
    MeasureConfig,
    PruneConfig,
    RunConfig,
    TrainConfig,
    config_from_dict,
    config_keys,
    config_to_dict,
    expand_grid,
    flatten_config,
    identity_dict,
    identity_keys,
    load_config,
    parse_overrides,
    run_id,
    update_config,
)
from gfverify.errors import ConfigError


def _toml(tmp_path, text: str, name: str = "cfg.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


SMALL = ["train.epochs=3", "train.lrs=[0.1]", "train.lr_epochs=[3]", "prune.rounds=1"]


# --------------------------------------------------------------------------------- defaults


def test_defaults_are_the_official_protocol():
    c = RunConfig()
    assert (c.data.name, c.data.normalize, c.data.augment) == ("cifar10", "half", True)
    assert c.data.val_fraction == 0.1 and c.data.train_subset is None
    assert c.model.name == "resnet56" and c.model.input_size == 32
    assert c.measure.samples == 2560 and c.measure.batch_size == 128
    assert c.measure.temperature is None and c.measure.hg_temperature is None
    assert (c.prune.ratio, c.prune.rounds, c.prune.schedule) == (0.75, 25, "official")
    assert (c.prune.floor, c.prune.resnet_mode, c.prune.preserve_momentum) == (
        "importance",
        "paper",
        False,
    )
    t = c.train
    assert (t.epochs, t.lrs, t.lr_epochs) == (160, (0.1, 0.01, 0.001), (80, 40, 40))
    assert (t.momentum, t.weight_decay, t.batch_size, t.temperature) == (0.9, 1e-4, 128, 5.0)
    assert (t.warmup_epochs, t.pretrained, t.eval_every) == (0, None, 1)
    assert (c.seed, c.device, c.precision, c.name) == (0, "auto", "fp32", "")


def test_configs_are_frozen_and_validate_on_replace():
    c = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.seed = 3  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"'prune\.ratio'"):
        dataclasses.replace(c.prune, ratio=0.99)


def test_int_accepted_for_float_and_list_for_tuple():
    assert type(PruneConfig(ratio=0).ratio) is float
    p = PruneConfig(ratio=0.75, thresholds=[0.3, 0.75], schedule="thresholds", rounds=2)
    assert p.thresholds == (0.3, 0.75) and isinstance(p.thresholds, tuple)
    m = MeasureConfig(temperature=5)
    assert m.temperature == 5.0 and type(m.temperature) is float


# --------------------------------------------------------------------------------- TOML


def test_load_config_sections_toplevel_and_overrides(tmp_path):
    path = _toml(
        tmp_path,
        """
        seed = 3
        precision = "fp64"
        [data]
        name = "cifar100"
        [model]
        name = "vgg13"
        [measure]
        name = "grasp"
        hg_temperature = 200
        [prune]
        ratio = 0.5
        rounds = 5
        [train]
        epochs = 10
        lrs = [0.1, 0.01]
        lr_epochs = [6, 4]
        """,
    )
    c = load_config(path)
    assert (c.seed, c.precision, c.data.name, c.model.name) == (3, "fp64", "cifar100", "vgg13")
    assert c.measure.hg_temperature == 200.0 and c.prune.ratio == 0.5
    assert c.train.lrs == (0.1, 0.01) and c.train.lr_epochs == (6, 4)

    c2 = load_config(
        path,
        [
            "train.epochs=12",
            "train.lr_epochs=[8,4]",
            "model.name=mobilenet",  # bare word for a string field
            "data.root=/scratch/data",  # bare path
            "prune.schedule=thresholds",
            "prune.thresholds=[0.3,0.5]",
            "prune.rounds=2",
            "measure.hg_temperature=none",
            "name=2024",  # a str field keeps the raw text
            "device='cuda:1'",
        ],
    )
    assert c2.train.epochs == 12 and c2.model.name == "mobilenet"
    assert c2.data.root == "/scratch/data" and c2.name == "2024"
    assert c2.prune.thresholds == (0.3, 0.5) and c2.measure.hg_temperature is None
    assert c2.device == "cuda:1"


def test_overrides_may_complete_a_partial_file(tmp_path):
    path = _toml(tmp_path, "[train]\nepochs = 3\n")
    with pytest.raises(ConfigError, match=r"train\.epochs=3 \(in .*cfg\.toml\)"):
        load_config(path)
    c = load_config(path, ["train.lr_epochs=[3]", "train.lrs=[0.1]", "prune.rounds=1"])
    assert c.train.epochs == 3 and c.train.lr_epochs == (3,)


def test_parse_overrides_values_are_toml():
    parsed = parse_overrides(
        ["train.epochs=2", "prune.thresholds=[0.3, 0.5]", "data.augment=false"]
    )
    assert parsed == {"train.epochs": 2, "prune.thresholds": [0.3, 0.5], "data.augment": False}


@pytest.mark.parametrize(
    ("override", "key", "extra"),
    [
        ("train.epoch=3", "train.epoch", "did you mean 'train.epochs'"),
        ("trian.epochs=3", "trian.epochs", "did you mean 'train.epochs'"),
        ("measure.temprature=3", "measure.temprature", "did you mean 'measure.temperature'"),
        ("sed=1", "sed", "did you mean 'seed'"),
    ],
)
def test_unknown_keys_named_with_suggestion(tmp_path, override, key, extra):
    path = _toml(tmp_path, "seed = 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    msg = str(info.value)
    assert f"unknown config key '{key}'" in msg and extra in msg
    assert "\n" not in msg


def test_section_given_as_a_key_is_explained():
    with pytest.raises(ConfigError, match=r"'train' is a section; set its fields as"):
        update_config(RunConfig(), ["train={epochs=2}"])


def test_unknown_key_in_file_is_named(tmp_path):
    path = _toml(tmp_path, "[train]\nepoch = 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.epoch' \(did you mean"):
        load_config(path)
    path = _toml(tmp_path, "[trainn]\nepochs = 3\n", "b.toml")
    with pytest.raises(ConfigError, match=r"'trainn'"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.epochs=abc", "train.epochs"),
        ("train.epochs=2.5", "train.epochs"),
        ("seed=true", "seed"),
        ("data.augment=1", "data.augment"),
        ("prune.ratio='high'", "prune.ratio"),
        ("train.lrs=[0.1, 'x']", "train.lrs[1]"),
        ("train.lrs=0.1", "train.lrs"),
        ("measure.samples=none", "measure.samples"),
    ],
)
def test_wrong_types_name_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        update_config(RunConfig(), [override])
    assert f"'{key}'" in str(info.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("prune.ratio=0.96", "prune.ratio"),
        ("prune.ratio=-0.1", "prune.ratio"),
        ("prune.rounds=0", "prune.rounds"),
        ("prune.schedule='linear'", "prune.schedule"),
        ("prune.floor=random", "prune.floor"),
        ("prune.resnet_mode=half", "prune.resnet_mode"),
        ("data.val_fraction=1.0", "data.val_fraction"),
        ("data.normalize=zscore", "data.normalize"),
        ("data.train_subset=0", "data.train_subset"),
        ("model.width_mult=0", "model.width_mult"),
        ("model.factory=notamodule", "model.factory"),
        ("measure.temperature=0", "measure.temperature"),
        ("measure.samples=0", "measure.samples"),
        ("train.momentum=1.0", "train.momentum"),
        ("train.temperature=-5", "train.temperature"),
        ("train.weight_decay=-1e-4", "train.weight_decay"),
        ("precision=fp16", "precision"),
        ("device=gpu0", "device"),
        ("seed=-1", "seed"),
        ("model.name='res net'", "model.name"),
        ("train.epochs=nan", "train.epochs"),
        ("prune.ratio=inf", "prune.ratio"),
    ],
)
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        update_config(RunConfig(), [override])
    assert f"'{key}'" in str(info.value)


def test_cross_field_checks():
    with pytest.raises(ConfigError, match=r"'train\.lr_epochs' sums to 160 but train\.epochs=2"):
        update_config(RunConfig(), ["train.epochs=2"])
    with pytest.raises(ConfigError, match=r"'train\.lr_epochs' has 2 phases"):
        update_config(RunConfig(), ["train.lr_epochs=[80,80]"])
    with pytest.raises(ConfigError, match=r"'prune\.rounds'"):
        update_config(RunConfig(), [*SMALL, "prune.rounds=4"])
    # no pruning: rounds do not have to fit
    update_config(RunConfig(), [*SMALL, "prune.rounds=4", "prune.ratio=0"])
    with pytest.raises(ConfigError, match=r"'prune\.thresholds' must be non-empty"):
        update_config(RunConfig(), ["prune.schedule=thresholds"])
    with pytest.raises(ConfigError, match=r"'prune\.thresholds' is only used"):
        update_config(RunConfig(), ["prune.thresholds=[0.5]"])
    base = ["prune.schedule=thresholds", "prune.rounds=2"]
    with pytest.raises(ConfigError, match=r"'prune\.thresholds' must increase"):
        update_config(RunConfig(), [*base, "prune.thresholds=[0.75,0.5]"])
    with pytest.raises(ConfigError, match=r"'prune\.thresholds' has 3 entries"):
        update_config(RunConfig(), [*base, "prune.thresholds=[0.2,0.5,0.75]"])
    with pytest.raises(ConfigError, match=r"ends at 0.5 but prune\.ratio=0\.75"):
        update_config(RunConfig(), [*base, "prune.thresholds=[0.3,0.5]"])
    ok = update_config(RunConfig(), [*base, "prune.thresholds=[0.3,0.75]"])
    assert ok.prune.thresholds == (0.3, 0.75)


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(_toml(tmp_path, "[train\nepochs = 3\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"\[sweep\]"):
        load_config(_toml(tmp_path, "[sweep]\nseed = [0, 1]\n", "s.toml"))
    with pytest.raises(ConfigError, match="key=value"):
        load_config(_toml(tmp_path, "seed = 1\n", "t.toml"), ["seed"])


# --------------------------------------------------------------------------------- dicts


_configs = st.builds(
    lambda ratio, seed, measure, model, temp, aug, th: update_config(
        RunConfig(),
        {
            "prune.ratio": ratio,
            "seed": seed,
            "measure.name": measure,
            "model.name": model,
            "measure.temperature": temp,
            "data.augment": aug,
            **(
                {
                    "prune.schedule": "thresholds",
                    "prune.thresholds": [ratio / 2, ratio],
                    "prune.rounds": 2,
                }
                if th and ratio > 0.01
                else {}
            ),
        },
    ),
    st.floats(0.0, 0.95, allow_nan=False),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["magnitude", "loss_based", "grasp", "grad_preserve"]),
    st.sampled_from(["vgg13", "mobilenet", "resnet56"]),
    st.one_of(st.none(), st.floats(0.1, 500.0)),
    st.booleans(),
    st.booleans(),
)


@settings(max_examples=40, deadline=None)
@given(_configs)
def test_dict_and_json_roundtrip(config):
    d = config_to_dict(config)
    again = config_from_dict(json.loads(json.dumps(d)))
    assert again == config
    assert run_id(again) == run_id(config)
    assert set(flatten_config(config)) == set(config_keys())


def test_config_from_dict_is_strict_and_fills_defaults():
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.epochz'"):
        config_from_dict({"train": {"epochz": 3}})
    with pytest.raises(ConfigError, match=r"'train' must be a table"):
        config_from_dict({"train": 3})
    with pytest.raises(ConfigError, match=r"'measure\.temperature' expects"):
        config_from_dict({"measure": {"temperature": "hot"}})
    assert config_from_dict({"model": {"name": "vgg13"}}) == update_config(
        RunConfig(), {"model.name": "vgg13"}
    )


# --------------------------------------------------------------------------------- run ids


def test_run_id_is_sha256_of_nondefault_identity_fields():
    c = update_config(RunConfig(), {"model.name": "vgg13", "seed": 2, "device": "cuda:0"})
    assert identity_dict(c) == {"model": {"name": "vgg13"}, "seed": 2}
    canonical = '{"config":{"model":{"name":"vgg13"},"seed":2},"v":1}'
    assert run_id(c) == hashlib.sha256(canonical.encode()).hexdigest()[:12]
    assert identity_dict(RunConfig()) == {}
    assert run_id(RunConfig()) == hashlib.sha256(b'{"config":{},"v":1}').hexdigest()[:12]


def test_run_id_ignores_defaults_and_non_identity_fields():
    base = RunConfig()
    explicit = update_config(base, {"prune.ratio": 0.75, "train.epochs": 160, "seed": 0})
    assert run_id(explicit) == run_id(base)
    for change in (
        {"device": "cuda:3"},
        {"name": "my run"},
        {"data.root": "/elsewhere"},
        {"data.download": True},
        {"data.verify_md5": False},
    ):
        assert run_id(update_config(base, change)) == run_id(base), change
    for change in ({"seed": 1}, {"prune.ratio": 0.5}, {"measure.name": "grasp"}):
        assert run_id(update_config(base, change)) != run_id(base), change
    assert {"device", "name", "data.root"}.isdisjoint(identity_keys())


@dataclass(frozen=True)
class _TrainV2(TrainConfig):
    label_smoothing: float = 0.0  # a field added in a later version, with a default


@dataclass(frozen=True)
class _RunV2(RunConfig):
    train: _TrainV2 = field(default_factory=_TrainV2)


def test_adding_a_defaulted_field_keeps_old_run_ids():
    old = update_config(RunConfig(), {"model.name": "vgg13", "train.temperature": 1.0})
    new = _RunV2(model=old.model, train=_TrainV2(temperature=1.0))
    assert run_id(new) == run_id(old)
    changed = _RunV2(model=old.model, train=_TrainV2(temperature=1.0, label_smoothing=0.1))
    assert run_id(changed) != run_id(old)


# --------------------------------------------------------------------------------- grids


def test_expand_grid_cartesian_product_in_file_order(tmp_path):
    path = _toml(
        tmp_path,
        """
        [train]
        epochs = 3
        lrs = [0.1]
        lr_epochs = [3]
        [prune]
        rounds = 1
        [sweep]
        "model.name" = ["vgg13", "resnet56"]
        "measure.name" = ["magnitude", "grasp", "grad_preserve"]
        seed = [0, 1]
        """,
    )
    configs = expand_grid(path)
    points = [(c.model.name, c.measure.name, c.seed) for c in configs]
    expected = [
        (m, s, seed)
        for m in ("vgg13", "resnet56")
        for s in ("magnitude", "grasp", "grad_preserve")
        for seed in (0, 1)
    ]
    assert points == expected
    assert len({run_id(c) for c in configs}) == 12
    assert all(c.train.epochs == 3 for c in configs)
    assert expand_grid(path) == configs  # deterministic

    restricted = expand_grid(path, ["sweep.seed=[5]", "train.momentum=0.5"])
    assert [(c.model.name, c.measure.name, c.seed) for c in restricted] == [
        (m, s, 5) for m in ("vgg13", "resnet56") for s in ("magnitude", "grasp", "grad_preserve")
    ]
    assert all(c.train.momentum == 0.5 for c in restricted)
    # an override of a swept key wins, and duplicates collapse
    single = expand_grid(path, ["seed=7", "model.name=vgg13"])
    assert [(c.model.name, c.measure.name, c.seed) for c in single] == [
        ("vgg13", s, 7) for s in ("magnitude", "grasp", "grad_preserve")
    ]


def test_expand_grid_nested_tables_and_errors(tmp_path):
    path = _toml(
        tmp_path,
        """
        [sweep]
        prune.ratio = [0.5, 0.75]
        """,
    )
    assert [c.prune.ratio for c in expand_grid(path)] == [0.5, 0.75]
    bad = _toml(tmp_path, '[sweep]\n"prune.ratioo" = [0.5]\n', "bad.toml")
    with pytest.raises(ConfigError, match=r"unknown config key 'prune\.ratioo'.*\[sweep\]"):
        expand_grid(bad)
    bad = _toml(tmp_path, '[sweep]\n"prune.ratio" = 0.5\n', "bad2.toml")
    with pytest.raises(ConfigError, match=r"'prune\.ratio'.*non-empty list"):
        expand_grid(bad)
    bad = _toml(tmp_path, '[sweep]\n"prune.ratio" = [0.5, 0.99]\n', "bad3.toml")
    with pytest.raises(ConfigError, match=r"'prune\.ratio'.*grid point prune\.ratio=0\.99"):
        expand_grid(bad)
    plain = _toml(tmp_path, "seed = 4\n", "plain.toml")
    assert [c.seed for c in expand_grid(plain)] == [4]


def test_hvp_method_is_configurable_but_the_timed_auto_choice_is_refused():
    from gfverify.config import RunConfig, run_id, update_config

    base = RunConfig()
    chosen = update_config(base, {"measure.hvp_method": "reverse_over_reverse"})
    assert chosen.measure.hvp_method == "reverse_over_reverse"
    assert run_id(chosen) != run_id(base)  # a different computation is a different run
    assert run_id(update_config(base, {"measure.hvp_method": "reverse_over_forward"})) == run_id(
        base
    )  # the default adds nothing to the id
    with pytest.raises(ConfigError, match="measure.hvp_method"):
        update_config(base, {"measure.hvp_method": "auto"})
