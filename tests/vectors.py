"""Load the official reference vectors (../shared/vectors) and rebuild their tiny nets."""

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

VECTORS = Path(__file__).resolve().parent / "data" / "vectors"  # copied from ../shared/vectors
NETS = ("official_tiny_vgg", "official_tiny_cnn_bnfirst")
#: official measure flag -> our registry name
OFFICIAL_NAMES = {
    "mag_based": "magnitude",
    "loss_based": "loss_preservation",
    "biased_loss": "biased_loss_preservation",
    "grasp": "grasp",
    "grad_preserve": "gradient_norm_preservation",
    "tfo": "taylor_fo",
    "fisher": "fisher",
    "nvidia": "bn_fisher",
    "l1": "l1",
    "bn": "bn_scale",
}


def _layer(spec: dict) -> nn.Module:
    kind = spec["type"]
    if kind == "Conv2d":
        return nn.Conv2d(
            spec["in_channels"],
            spec["out_channels"],
            spec["kernel_size"],
            spec["stride"],
            spec["padding"],
            bias=spec["bias"],
        )
    if kind == "BatchNorm2d":
        return nn.BatchNorm2d(spec["num_features"], eps=spec["eps"], affine=spec["affine"])
    if kind == "Linear":
        return nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"])
    if kind == "MaxPool2d":
        return nn.MaxPool2d(spec["kernel_size"], spec["stride"])
    if kind == "AdaptiveAvgPool2d":
        return nn.AdaptiveAvgPool2d(spec["output_size"])
    return {"ReLU": nn.ReLU, "Tanh": nn.Tanh, "Flatten": nn.Flatten}[kind]()


def load(net: str):
    """(model in eval mode, float64), batches [(x_b, y_b)] in loader order, the npz, meta."""
    z = np.load(VECTORS / f"{net}.npz", allow_pickle=False)
    meta = json.loads(str(z["meta/json"]))
    layers = meta["architecture"]["layers"]
    model = nn.Sequential(*[_layer(s) for s in layers]).double()
    state = {k[len("state/") :]: torch.from_numpy(z[k]) for k in z.files if k.startswith("state/")}
    model.load_state_dict(state, strict=True)
    model.eval()
    x, y = torch.from_numpy(z["data/x"]), torch.from_numpy(z["data/y"])
    batches = [(x[b], y[b]) for b in range(x.shape[0])]
    return model, batches, z, meta
