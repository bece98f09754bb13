"""VGG-13 vs a linear classifier on Fashion-MNIST, same split (reports/real/vgg13_vs_linear.toml).

The linear classifier: multinomial logistic regression (scikit-learn, lbfgs, L2 C = 1, at most
``MAX_ITER`` iterations) on the 784 raw pixels scaled to v/255 and standardised with the
training split's per-pixel mean/std, fitted on exactly the training images of the VGG run
(gfverify's seeded split: val_fraction 0.05, seed 0, so 57,000 images) and scored on all 10,000
test images. The VGG-13 number is the run's final-epoch test accuracy from its result.json.
Writes reports/real/vgg_vs_linear.json and prints it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from gfverify.config import load_config, run_id
from gfverify.data import DataSpec, load_datasets

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "vgg13_vs_linear.toml"
RUNS = HERE / "runs_vgg_linear"
MAX_ITER = 1000


def pixels(subset) -> np.ndarray:
    """The subset's images as (N, 784) floats v/255 (the 28×28 inside the 2-px zero border)."""
    return subset.source.images[subset.indices, 2:30, 2:30, 0].reshape(len(subset), -1) / 255.0


def main() -> dict:
    config = load_config(CONFIG)
    d = config.data
    spec = DataSpec(name=d.name, root=d.root, val_fraction=d.val_fraction, seed=config.seed)
    data = load_datasets(spec)
    x_tr, y_tr = pixels(data.train), data.train.targets
    x_te, y_te = pixels(data.test), data.test.targets
    scaler = StandardScaler().fit(x_tr)
    t0 = time.perf_counter()
    clf = LogisticRegression(max_iter=MAX_ITER, C=1.0)
    clf.fit(scaler.transform(x_tr), y_tr)
    fit_s = time.perf_counter() - t0
    linear = float((clf.predict(scaler.transform(x_te)) == y_te).mean())
    out = {
        "train_images": int(len(y_tr)),
        "test_images": int(len(y_te)),
        "linear_test_acc": round(linear, 4),
        "linear_train_acc": round(float(clf.score(scaler.transform(x_tr), y_tr)), 4),
        "linear_iterations": int(np.max(clf.n_iter_)),
        "linear_fit_s": round(fit_s, 1),
    }
    result = RUNS / run_id(config) / "result.json"
    if result.is_file():
        r = json.loads(result.read_text())
        out.update(
            vgg13_test_acc=r["final_test_acc"],
            vgg13_best_val_acc=r.get("best_val_acc"),
            vgg13_seconds=r["seconds"],
            vgg13_params=r["dense_params"],
            vgg13_beats_linear=r["final_test_acc"] > linear,
        )
    else:
        out["vgg13"] = f"not run yet: {result} missing"
    (HERE / "vgg_vs_linear.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
