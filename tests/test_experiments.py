"""Every experiment config in experiments/ loads, expands, validates and matches its README."""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from functools import cache
from pathlib import Path

import pytest
import torch

from gfverify.config import (
    RunConfig,
    config_to_dict,
    expand_grid,
    flatten_config,
    identity_keys,
    run_id,
)
from gfverify.data import DATASETS
from gfverify.measures import MEASURES
from gfverify.models import MODELS, build_model
from gfverify.schedule import Schedule

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
FILES = sorted(EXPERIMENTS.glob("*.toml"))
PAPER_FILES = [p for p in FILES if not p.name.startswith(("smoke", "claims_"))]
#: Scales of the statistical claims (gfverify.claims.scales): tested by their own rules below.
SCALE_FILES = [p for p in FILES if p.name.startswith("claims_")]
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "tinyimagenet": 200, "digits": 10, "synthetic": 10}
PAPER_MODELS = ("vgg13", "mobilenet_v1", "resnet56")
PAPER_DATA = ("cifar10", "cifar100")
PAPER_MEASURES = (
    "magnitude",
    "loss_preservation",
    "biased_loss_preservation",
    "grasp",
    "gradient_norm_preservation",
)
DEFAULT = RunConfig()


@cache
def grid(name: str) -> tuple[RunConfig, ...]:
    return tuple(expand_grid(EXPERIMENTS / name))


def ids(name: str) -> set[str]:
    return {run_id(c) for c in grid(name)}


def _sweep_size(path: Path) -> int:
    """Number of grid points the [sweep] table describes (the product of its list lengths)."""

    def leaves(table: dict) -> list:
        out = []
        for value in table.values():
            out.extend(leaves(value) if isinstance(value, dict) else [value])
        return out

    raw = tomllib.loads(path.read_text())
    return math.prod(len(v) for v in leaves(raw.get("sweep", {})))


@cache
def _forward_shape(name: str, classes: int, width: float, size: int) -> tuple[int, ...]:
    torch.manual_seed(0)
    model = build_model(name, num_classes=classes, width_mult=width, input_size=size).eval()
    with torch.no_grad():
        return tuple(model(torch.zeros(1, 3, size, size)).shape)


def test_there_are_paper_experiments():
    assert len(PAPER_FILES) >= 10


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_file_expands_to_valid_unique_runs(path):
    configs = expand_grid(path)
    assert configs, path
    # expand_grid silently drops duplicates: every grid point must be a distinct run
    assert len(configs) == _sweep_size(path) == len({run_id(c) for c in configs})
    for cfg in configs:
        assert cfg.data.name in DATASETS, cfg.data.name
        assert cfg.measure.name in MEASURES, cfg.measure.name
        assert cfg.model.factory is not None or cfg.model.name in MODELS, cfg.model.name
        p = cfg.prune
        schedule = Schedule(p.schedule, p.ratio, p.rounds, p.thresholds)  # validates
        assert schedule.ratio == pytest.approx(p.ratio)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_models_build_for_the_dataset_and_input_size(path):
    for cfg in expand_grid(path):
        if cfg.model.factory is not None or cfg.data.name not in NUM_CLASSES:
            continue
        classes = NUM_CLASSES[cfg.data.name]
        size = cfg.model.input_size
        shape = _forward_shape(cfg.model.name, classes, cfg.model.width_mult, size)
        assert shape == (1, classes)


@pytest.mark.parametrize("path", PAPER_FILES, ids=lambda p: p.name)
def test_header_documents_choices_and_run_count(path):
    text = path.read_text()
    header = "\n".join(ln for ln in text.splitlines() if ln.startswith("#"))
    assert "spec" in header and "seed" in header
    assert re.search(r"ratio|warmup|\[MISSING\]|unknown", header, re.I)
    stated = re.search(r"^# Runs: .*?= (\d+)", header, re.M)
    assert stated, f"{path.name}: no '# Runs: ... = N' line"
    assert int(stated.group(1)) == len(grid(path.name))


def _paper_configs() -> list[RunConfig]:
    return [c for p in PAPER_FILES for c in grid(p.name)]


def test_every_network_dataset_and_measure_has_three_seeds_at_one_protocol():
    seeds: dict[tuple, set[int]] = defaultdict(set)
    for cfg in _paper_configs():
        official = (
            cfg.train == DEFAULT.train
            and cfg.prune.schedule == "official"
            and cfg.measure.hg_temperature is None
            and cfg.model.input_size == 32
        )
        if official:
            key = (cfg.model.name, cfg.data.name, cfg.measure.name, cfg.prune.ratio)
            seeds[key].add(cfg.seed)
    for model in PAPER_MODELS:
        for data in PAPER_DATA:
            for measure in PAPER_MEASURES:
                got = seeds[(model, data, measure, 0.75)]
                assert len(got) >= 3, (model, data, measure, sorted(got))


def _pairs(configs, vary: str) -> dict[tuple, set]:
    """Group configs by every identity key except ``vary``: group -> the values of ``vary``."""
    keys = [k for k in identity_keys() if k != vary]
    groups: dict[tuple, set] = defaultdict(set)
    for cfg in configs:
        flat = flatten_config(cfg)
        groups[tuple(repr(flat[k]) for k in keys)].add(flat[vary])
    return groups


@pytest.mark.parametrize(
    ("name", "measures"),
    [
        ("s1_magnitude_vs_loss.toml", {"magnitude", "loss_preservation"}),
        ("s1_one_shot_epoch1.toml", {"magnitude", "loss_preservation"}),
        ("s5_grasp_vs_gnp.toml", {"grasp", "gradient_norm_preservation"}),
    ],
)
def test_claim_grids_are_paired_with_five_seeds_on_every_setting(name, measures):
    configs = grid(name)
    # paired design: every setting (all keys but the measure) has exactly the two measures
    assert all(v == measures for v in _pairs(configs, "measure.name").values())
    settings = {(c.model.name, c.data.name) for c in configs}
    assert settings == {(m, d) for m in PAPER_MODELS for d in PAPER_DATA}
    for setting in settings:
        seeds = {c.seed for c in configs if (c.model.name, c.data.name) == setting}
        assert len(seeds) >= 5, (name, setting)


def test_s1_one_shot_prunes_once_after_the_first_epoch():
    for cfg in grid("s1_one_shot_epoch1.toml"):
        assert cfg.prune.schedule == "one_shot" and cfg.prune.rounds == 1
        assert cfg.train.warmup_epochs == 0 and cfg.train.pretrained is None


def test_grasp_temperature_ablation_pairs_with_gnp_runs():
    ablation = grid("s5_grasp_t1_ablation.toml")
    assert {(c.measure.name, c.measure.hg_temperature) for c in ablation} == {("grasp", 1.0)}
    gnp = {
        (c.model.name, c.data.name, c.seed, c.prune.ratio, c.prune.rounds)
        for c in grid("s5_grasp_vs_gnp.toml")
        if c.measure.name == "gradient_norm_preservation"
    }
    for c in ablation:
        assert (c.model.name, c.data.name, c.seed, c.prune.ratio, c.prune.rounds) in gnp
        assert c.train == DEFAULT.train


def test_designed_overlaps_share_run_ids():
    tables = set().union(*(ids(p.name) for p in PAPER_FILES if p.name.startswith("table_")))
    s1 = {run_id(c) for c in grid("s1_magnitude_vs_loss.toml") if c.seed <= 2}
    s5 = {run_id(c) for c in grid("s5_grasp_vs_gnp.toml") if c.seed <= 2}
    assert len(s1) == len(s5) == 36 and s1 <= tables and s5 <= tables
    warm0 = {run_id(c) for c in grid("prune_after_warmup.toml") if c.train.warmup_epochs == 0}
    assert warm0 == ids("table_cifar100_resnet56.toml")
    r75 = {run_id(c) for c in grid("ratio_sensitivity.toml") if c.prune.ratio == 0.75}
    assert r75 == set().union(*(ids(f"table_cifar100_{m}.toml") for m in PAPER_MODELS))


def test_trained_model_grids():
    warm = grid("prune_after_warmup.toml")
    assert {c.train.warmup_epochs for c in warm} >= {0, 55}
    assert max(c.train.warmup_epochs + c.prune.rounds for c in warm) <= DEFAULT.train.lr_epochs[0]
    pre = grid("prune_pretrained.toml")
    assert all(c.train.pretrained for c in pre)
    assert {c.measure.name for c in pre} == set(PAPER_MEASURES)
    base = grid("base_unpruned.toml")
    assert all(c.prune.ratio == 0 for c in base)
    assert {(c.model.name, c.data.name) for c in base} == {
        (m, d) for m in PAPER_MODELS for d in PAPER_DATA
    }


def test_tinyimagenet_is_64px_200_classes_and_says_its_status():
    configs = grid("tinyimagenet.toml")
    assert {c.data.name for c in configs} == {"tinyimagenet"}
    assert {c.model.input_size for c in configs} == {64}
    assert {c.model.name for c in configs} == set(PAPER_MODELS)
    assert "[MISSING]" in (EXPERIMENTS / "tinyimagenet.toml").read_text()


def _readme_rows() -> dict[str, dict[str, str]]:
    lines = (EXPERIMENTS / "README.md").read_text().splitlines()
    header = next(ln for ln in lines if ln.startswith("| file |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = {}
    for line in lines:
        if not line.startswith("| [") or ".toml" not in line:
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        name = re.search(r"([\w.-]+\.toml)", cells[0]).group(1)
        rows[name] = dict(zip(columns, cells))
    return rows


def test_readme_lists_every_file_with_its_run_counts():
    rows = _readme_rows()
    assert set(rows) == {p.name for p in PAPER_FILES}
    seen: set[str] = set()
    for name, row in rows.items():  # README order: "new runs" = not in a row above
        assert int(row["runs"]) == len(grid(name)), name
        assert int(row["new runs"]) == len(ids(name) - seen), name
        seen |= ids(name)
    text = (EXPERIMENTS / "README.md").read_text()
    total = sum(len(grid(p.name)) for p in PAPER_FILES)
    assert f"{total} runs in the table, **{len(seen)} unique**" in text
    assert "estimate" in text.lower()


@pytest.mark.parametrize("path", SCALE_FILES, ids=lambda p: p.name)
def test_claims_scale_has_paired_arms_and_one_control_per_seed(path):
    """A claims scale (issue 13): per experiment (everything but measure, seed and ratio) and
    seed, probed one-shot runs of several measures that agree on everything but the measure,
    and one unpruned control (ratio 0, one-shot). The quick and paper headers' '# Runs: ... = N'
    counts the runs `gfverify check --scale` trains."""
    from gfverify.claims import scales

    configs = scales.configs(path)
    assert all(c.probe.enabled and c.prune.schedule == "one_shot" for c in configs)

    def context(c):
        d = config_to_dict(c)
        d.pop("seed"), d.pop("measure"), d["prune"].pop("ratio")
        return json.dumps(d, sort_keys=True)

    by_ctx: dict[str, list] = {}
    for c in configs:
        by_ctx.setdefault(context(c), []).append(c)
    seeds = {c.seed for c in configs}
    for group in by_ctx.values():
        controls = [c for c in group if scales.is_control(c)]
        pruned = [c for c in group if not scales.is_control(c)]
        measures = {c.measure.name for c in pruned}
        assert sorted(c.seed for c in controls) == sorted(seeds)
        assert len(measures) >= 2 and len(pruned) == len(measures) * len(seeds)
    header = "\n".join(ln for ln in path.read_text().splitlines() if ln.startswith("#"))
    stated = re.search(r"^# Runs: .*?= (\d+)", header, re.M)
    if path.name in ("claims_quick.toml", "claims_paper.toml"):
        assert stated and int(stated.group(1)) == len(configs)
    if path.name == "claims_quick.toml":  # what the quick scale ran before the one engine
        assert len(seeds) == 8 and len(by_ctx) == 1 and len(configs) == 56
        assert {c.data.name for c in configs} == {"digits"}
