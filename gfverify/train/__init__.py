"""The paper's prune-while-training protocol (spec/paper.md §3.3–3.6).

``run_training(config, run_dir) -> dict`` is the train function that
:func:`gfverify.runs.execute` calls (``"gfverify.train:run_training"``). Modules:

- :mod:`~gfverify.train.protocol`: epoch phases, learning rates, schedule, data/device mapping;
- :mod:`~gfverify.train.loop`: one SGD epoch, evaluation, scoring batches, the ‖θ‖²/‖g‖² probe;
- :mod:`~gfverify.train.pruning`: one round (scores or EMA, global ranking, surgery, optimizer);
- :mod:`~gfverify.train.state`: checkpoint contents, resume, pretrained weights;
- :mod:`~gfverify.train.runner`: the loop that ties them together and the result dict.
"""

from gfverify.train.protocol import EpochSpec, check_config, data_spec, epoch_plan, lr_at
from gfverify.train.pruning import PruneSetup, RoundPlan, ScoreEMA, plan_round
from gfverify.train.runner import Trainer, build_network, run_training

__all__ = [
    "EpochSpec",
    "PruneSetup",
    "RoundPlan",
    "ScoreEMA",
    "Trainer",
    "build_network",
    "check_config",
    "data_spec",
    "epoch_plan",
    "lr_at",
    "plan_round",
    "run_training",
]
