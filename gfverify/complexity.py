"""Analytic MACs and parameter counts from layer shapes, with masked channels counted as gone.

For one input sample of shape ``input_shape``:

- Conv (``groups == 1``):  MACs = P · (C_out − m_out) · (C_in − d_in) · k₁k₂…, where P is the
  number of output positions (H_out·W_out), ``m_out`` the layer's masked output channels and
  ``d_in`` its *dead* input channels (below).
- Depthwise conv:  MACs = P · C · k₁k₂… .
- Linear:  MACs = P · (out − m_out) · (in − d_in), P = number of rows (1 for 2-D input).
- Grouped conv (groups = G):  MACs = P · C_out · (C_in / G) · k₁k₂… .
- ``nn.MultiheadAttention``: in/out projections and the two attention matmuls
  (:func:`attention_macs`); attention written by hand from ``F.scaled_dot_product_attention``
  or ``@`` is not counted.
- Bias additions, BatchNorm, activations, pooling and residual adds are not MACs here (ptflops
  counts them; tests add them analytically to compare).

Parameters: every trainable parameter entry of the model, minus the entries a masked channel
makes dead: a producing layer's weight rows (and bias) of masked output channels, its weight
columns of dead input channels, and the BN γ/β of masked channels.

A consumer's input channel is *dead* when it is structurally zero: every module that writes
that channel — each producing layer coupled to it, each BatchNorm on the way, each tied
depthwise conv — is masked there (:class:`gfverify.surgery.ChannelMask`). One unmasked writer
(e.g. the never-pruned ResNet stem in stage 1, or a depthwise conv whose BN turns 0 into β)
keeps the channel alive. This assumes that the element-wise ops on the way map 0 to 0 (ReLU in
the paper's nets). With that, a model whose coupled group is masked at channel c in every
member counts exactly like the model with c physically removed (``tests/test_complexity.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from gfverify.errors import ModelError
from gfverify.groups import analyze_with_graph, is_depthwise, is_producer, pruning_group
from gfverify.surgery import MASK_ATTR, ChannelMask


@dataclass(frozen=True)
class Complexity:
    """``macs``: conv + linear multiply-accumulates for one sample; ``params``: live parameter
    entries; ``layer_macs``: MACs per Conv/Linear module name."""

    macs: int
    params: int
    layer_macs: dict[str, int] = field(default_factory=dict)


def _zero_mask(module: nn.Module) -> set[int]:
    mask = getattr(module, MASK_ATTR, None)
    if not isinstance(mask, ChannelMask):
        return set()
    return set((mask.mask == 0).nonzero().flatten().tolist())


def dead_channels(
    model: nn.Module, example_input: torch.Tensor
) -> tuple[dict[str, set[int]], dict[str, set[int]]]:
    """(masked output channels per producing layer, dead input channels per consumer), both
    keyed by module name; see the module docstring for the definition of dead."""
    masks = {n: _zero_mask(m) for n, m in model.named_modules()}
    masks = {n: z for n, z in masks.items() if z}
    if not masks:
        return {}, {}
    info, graph = analyze_with_graph(model, example_input)
    names = {m: n for n, m in model.named_modules()}
    out_masked: dict[str, set[int]] = {}
    for name, g in info.groups.items():
        z = masks.get(g.bn if g.bn is not None else name, set())
        if z:
            out_masked[name] = z
    dead_in: dict[str, set[int]] = {}
    for name, z in out_masked.items():
        module = model.get_submodule(name)
        group = pruning_group(graph, module, sorted(z))
        alive_roots: set[int] = set()
        consumers: list[tuple[str, list[int], list[int]]] = []
        for item in group.items:
            tmod = item.dep.target.module
            if not isinstance(tmod, nn.Module) or tmod not in names:
                continue
            tname = names[tmod]
            idxs = [int(i) for i in item.idxs]
            roots = [int(r) for r in item.root_idxs]
            if is_producer(tmod) and graph.is_in_channel_pruning_fn(item.dep.handler):
                consumers.append((tname, idxs, roots))
                continue
            if isinstance(tmod, _BatchNorm):
                writer_mask = masks.get(tname, set())
            elif is_depthwise(tmod):
                writer_mask = set()
            elif is_producer(tmod):
                if info.groups[tname].bn is not None:
                    continue  # its BatchNorm is the writer that is checked
                writer_mask = masks.get(tname, set())
            else:
                continue
            alive_roots.update(r for i, r in zip(idxs, roots) if i not in writer_mask)
        for tname, idxs, roots in consumers:
            dead = {i for i, r in zip(idxs, roots) if r not in alive_roots}
            if dead:
                dead_in.setdefault(tname, set()).update(dead)
    return out_masked, dead_in


def attention_macs(
    module: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> int:
    """MACs of one ``nn.MultiheadAttention`` call for one sample, with L_q, L_k the query and
    key lengths, E the embedding dim and k_d, v_d the key/value dims:
    in-projections L_q·E·E + L_k·E·k_d + L_k·E·v_d, scores QKᵀ L_q·L_k·E, weighted values
    A·V L_q·L_k·E, out-projection L_q·E·E (its Linear is not called as a module, so the Linear
    hook never sees it). Softmax, scaling, biases and masks are not MACs here."""
    e = module.embed_dim
    seq = 1 if module.batch_first else 0
    lq = query.shape[seq] if query.dim() == 3 else query.shape[0]
    lk = key.shape[seq] if key.dim() == 3 else key.shape[0]
    return lq * e * e + lk * e * module.kdim + lk * e * module.vdim + 2 * lq * lk * e + lq * e * e


def count_complexity(model: nn.Module, input_shape: tuple[int, ...]) -> Complexity:
    """MACs and live parameters of ``model`` for one input of shape ``input_shape`` (no batch
    dimension), as defined in the module docstring. The model is run once in eval mode under
    ``torch.no_grad``; its training flags are restored."""
    param = next(model.parameters(), None)
    if param is None:
        raise ModelError(f"model {type(model).__name__} has no parameters to count")
    x = torch.zeros((1, *input_shape), dtype=param.dtype, device=param.device)
    out_masked, dead_in = dead_channels(model, x)

    names = {m: n for n, m in model.named_modules()}
    layer_macs: dict[str, int] = {}
    live_weight: dict[str, int] = {}

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        name = names[module]
        m_out = len(out_masked.get(name, ()))
        d_in = len(dead_in.get(name, ()))
        if isinstance(module, nn.Linear):
            positions = output.numel() // module.out_features
            c_out, c_in, kernel, groups = module.out_features, module.in_features, 1, 1
        else:
            positions = math.prod(output.shape[2:])
            c_out, c_in, groups = module.out_channels, module.in_channels, module.groups
            kernel = math.prod(module.kernel_size)
        if groups == 1:
            per_pos = (c_out - m_out) * (c_in - d_in) * kernel
        else:  # depthwise (other grouped convs have no masks or dead inputs in our models)
            per_pos = c_out * (c_in // groups) * kernel
        layer_macs[name] = layer_macs.get(name, 0) + positions * per_pos
        live_weight[name] = per_pos

    def attention_hook(module: nn.MultiheadAttention, args: tuple, output: object) -> None:
        layer_macs[names[module]] = layer_macs.get(names[module], 0) + attention_macs(
            module, *args[:3]
        )

    modes = {m: m.training for m in model.modules()}
    hooks = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _ConvNd | nn.Linear)
    ]
    hooks += [
        m.register_forward_hook(attention_hook)
        for m in model.modules()
        if isinstance(m, nn.MultiheadAttention)
    ]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes.items():
            m.training = mode

    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    for name, per_pos in live_weight.items():
        module = model.get_submodule(name)
        params -= module.weight.numel() - per_pos
        if module.bias is not None:
            params -= len(out_masked.get(name, ()))
    for m in model.modules():
        if isinstance(m, _BatchNorm) and m.affine:
            params -= 2 * len(_zero_mask(m))
    return Complexity(macs=sum(layer_macs.values()), params=params, layer_macs=layer_macs)
