"""Our measures reproduce the official code's per-filter scores (float64, rtol 1e-8)."""

import numpy as np
import pytest

from gfverify.measures import score
from tests.vectors import NETS, OFFICIAL_NAMES, load


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("official", sorted(OFFICIAL_NAMES))
def test_measure_reproduces_official_scores(net, official):
    model, batches, z, meta = load(net)
    temps = {
        "grasp": float(z["settings/grasp_T"]),
        "grad_preserve": float(z["settings/grad_preserve_T"]),
    }
    scores = score(
        model,
        OFFICIAL_NAMES[official],
        batches,
        samples=int(z["settings/num_stop"]),
        train_temperature=float(z["settings/T"]),
        hg_temperature=temps.get(official),
        num_classes=int(z["settings/num_classes"]),
    )
    convs = meta["architecture"]["conv_layer_indices"]
    assert list(scores) == [str(i) for i in convs]
    worst = 0.0
    for k, idx in enumerate(convs):
        ref = z[f"score/{official}/layer{k}"]
        mine = scores[str(idx)].numpy()
        worst = max(worst, float(np.max(np.abs(mine - ref) / np.abs(ref))))
        np.testing.assert_allclose(mine, ref, rtol=1e-8, atol=0)
    print(f"{net} {official}: max relative difference {worst:.2e}")
