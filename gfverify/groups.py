"""Prunable filter groups: which parameter slices form one prunable filter, keyed by module name.

A *producing layer* is an ``nn.Linear`` or a (non-transposed) convolution that is not depthwise.
Filter ``f`` of producing layer ``P`` is the set of slices

    P.weight[f], P.bias[f], BN.weight[f], BN.bias[f]  (+ tied depthwise D.weight[f], ...)

where ``BN`` is the BatchNorm that normalises P's output channels (directly after P, possibly
behind channel-wise ops such as the ReLU of VGG's Conv→ReLU→BN) and a *tied* depthwise conv
(``groups == in_channels == out_channels``) is one whose channels are exactly P's output
channels (MobileNet: the depthwise layer after P), together with its own BN.

How the graph is found: torch-pruning's ``DependencyGraph`` (pinned 1.6.1), built by tracing
autograd on one example forward pass. We use it rather than ``torch.fx`` because (a) the same
graph drives the physical surgery (:mod:`gfverify.surgery`), so the groups we score and the
slices we cut can never disagree; (b) it follows the actual computation, so models with Python
control flow that ``torch.fx.symbolic_trace`` rejects still work; (c) it already resolves
residual additions (coupled layers), concatenations and flatten→Linear index maps.

Grouped convs and GroupNorm (G groups) keep equal-sized groups: a filter of a layer whose
channels reach one is the same position in every group (:attr:`FilterGroup.channel_groups`).
A layer torch-pruning's graph cannot prune with its neighbours (its channels meet a transposed
conv, a PReLU, a bare parameter such as a ViT's ``class_token`` or ConvNeXt's
``layer_scale``, a reshape it cannot map such as ShuffleNet's channel shuffle, an
``nn.MultiheadAttention``) is left out with a one-line reason naming the user's module or
parameter (:func:`unprunable`); the rest of the model is still scored and pruned. Two
torch-pruning limits are handled here, not patched in it: a concatenation's input sizes are
taken from the traced forward pass (its own backward inference gives up behind deep stacks,
Swin-S/B; :func:`_concat_sizes_from_trace`), and a layer whose index map grows past
:data:`INDEX_BUDGET` indices (Swin's window partitions) is left out with that reason: a count,
so the plan is the same on every machine (:func:`_index_budget`).

Coupling: layers whose outputs are added together (ResNet residual adds) share channel indices;
:func:`coupled_groups` lists them, in forward order, the first one being the group's
*representative* (see :func:`gfverify.surgery.prune_filters`, ``mode="full"``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.overrides import TorchFunctionMode
from torch_pruning.dependency import index_mapping as tp_index_mapping

from gfverify.errors import ModelError

# torch-pruning's internal op placeholders that only pass channels through (no parameters).
_PASS_THROUGH_OPS = (
    tp.ops._ElementWiseOp,
    tp.ops._ReshapeOp,
    tp.ops._ConcatOp,
    tp.ops._SplitOp,
    tp.ops._OutputOp,
)


@dataclass(frozen=True)
class FilterGroup:
    """One prunable layer and the parameter slices that make up each of its filters.

    Attributes:
        name: module name of the producing layer (Conv with ``groups == 1``, or Linear).
        weight / bias: its parameter names (``bias`` is ``None`` without a bias).
        bn: module name of the BatchNorm normalising its output channels, or ``None``.
        bn_weight / bn_bias: that BatchNorm's affine parameter names (``None`` if not affine).
        tied: module names of the depthwise convs whose channels are exactly this layer's
            output channels, and of their BatchNorms (forward order). For a layer in a coupled
            group (residual add), a depthwise conv after the add is tied to every member.
        num_filters: current number of output channels.
        tied_params: parameter names of the tied modules (each sliced along dim 0).
        channel_groups: G > 1 when the layer's channels reach a grouped conv with G groups
            (not depthwise) or a GroupNorm with G groups: those layers must keep equal-sized
            groups, so one *filter* is the channel set {k + i·num_filters : i < G} (the same
            position in every group, as torch-pruning removes them), scored by the sum of its
            channels' contributions. ``num_filters`` then counts these units.
    """

    name: str
    weight: str
    bias: str | None
    bn: str | None
    bn_weight: str | None
    bn_bias: str | None
    tied: tuple[str, ...]
    num_filters: int
    tied_params: tuple[str, ...] = field(default=())
    channel_groups: int = 1

    @property
    def num_channels(self) -> int:
        """Output channels of the layer: ``num_filters · channel_groups``."""
        return self.num_filters * self.channel_groups

    def channels(self, filters: list[int]) -> list[int]:
        """The output channels of filters ``filters``: filter k is the channel set
        {k + i·num_filters : i < channel_groups} (one channel when ``channel_groups == 1``)."""
        u = self.num_filters
        return sorted(k + i * u for i in range(self.channel_groups) for k in filters)

    def fold(self, per_channel: Tensor) -> Tensor:
        """Per-filter sums of a per-channel tensor: out[k] = Σ_i x[k + i·num_filters]."""
        return per_channel.reshape(self.channel_groups, self.num_filters).sum(dim=0)

    def param_names(self, include_bn: bool = False, include_tied: bool = False) -> dict[str, int]:
        """Parameter name -> the dimension that indexes this layer's filters (always 0 here:
        conv/linear weight and bias, BN γ/β, depthwise weight and bias)."""
        names = [self.weight, self.bias]
        if include_bn:
            names += [self.bn_weight, self.bn_bias]
        if include_tied:
            names += list(self.tied_params)
        return {n: 0 for n in names if n is not None}


@dataclass(frozen=True)
class GraphInfo:
    """Everything one trace tells us (internal; the public API is the functions below).

    ``groups`` holds every producing layer, the output layers included; ``output_layers``
    names those whose output channels reach the model output; ``coupled`` lists the coupled
    groups (size >= 2), each in forward order; ``order`` is the forward order of all
    Conv/Linear modules; ``skipped`` names the Conv/Linear layers that cannot be pruned, each
    with a one-line reason naming the user's module or parameter in the way.
    """

    groups: dict[str, FilterGroup]
    output_layers: frozenset[str]
    coupled: tuple[tuple[str, ...], ...]
    order: tuple[str, ...]
    #: Conv/Linear module name -> one-line reason why it is left out of every plan
    skipped: dict[str, str] = field(default_factory=dict)


#: set by :mod:`gfverify.surgery` on a depthwise conv it cuts: pruned to one channel, it has
#: ``groups == 1`` and would otherwise look like an ordinary 1 → 1 conv
DEPTHWISE_ATTR = "_gfverify_depthwise"


def is_depthwise(module: nn.Module) -> bool:
    """A conv with ``groups == in_channels == out_channels > 1`` (one filter per channel), or
    one that was depthwise before surgery cut it to a single channel (:data:`DEPTHWISE_ATTR`:
    MobileNet's first depthwise conv when the official floor int(0.05·8) + 1 = 1 leaves its
    producer one filter)."""
    return (
        isinstance(module, _ConvNd)
        and not module.transposed
        and (module.groups > 1 or getattr(module, DEPTHWISE_ATTR, False))
        and module.groups == module.in_channels == module.out_channels
    )


def is_producer(module: nn.Module) -> bool:
    """A layer whose output channels are filters: ``nn.Linear`` or a non-transposed conv that
    is not depthwise (``groups == 1`` or a grouped conv; depthwise convs are *tied*)."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, _ConvNd) and not module.transposed and not is_depthwise(module)


def is_grouped(module: nn.Module) -> bool:
    """A conv with ``groups > 1`` that is not depthwise (ResNeXt/RegNet grouped convs)."""
    return isinstance(module, _ConvNd) and module.groups > 1 and not is_depthwise(module)


_NORMS = (_BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def default_example_input(model: nn.Module, batch_size: int = 1) -> torch.Tensor:
    """A zero input for tracing, guessed from the first Conv/Linear in ``model.modules()``.

    Conv nets: ``(batch, C_in, s, s)`` with ``s = model.input_size`` if the model has that
    attribute, else 32 (CIFAR); Linear first (MLPs): ``(batch, in_features)``. Pass an explicit
    ``example_input`` when this guess does not fit the model.
    """
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    device = param.device if param is not None else torch.device("cpu")
    size = int(getattr(model, "input_size", 32))
    for m in model.modules():
        if isinstance(m, _ConvNd):
            spatial = (size,) * (m.weight.dim() - 2)
            return torch.zeros((batch_size, m.in_channels, *spatial), dtype=dtype, device=device)
        if isinstance(m, nn.Linear):
            return torch.zeros((batch_size, m.in_features), dtype=dtype, device=device)
    raise ModelError(f"model {type(model).__name__} has no Conv or Linear layer to prune")


#: Modules that have this boolean attribute (e.g. :class:`gfverify.surgery.ChannelMask`) get it
#: set to ``True`` while tracing and act as the identity, so masks do not hide their layer.
BYPASS_ATTR = "bypass_in_trace"


@contextmanager
def _tracing(model: nn.Module) -> Iterator[None]:
    """Eval mode, ``requires_grad`` on and masks bypassed for the trace; flags restored after."""
    modes = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    bypass = {m: getattr(m, BYPASS_ATTR) for m in model.modules() if hasattr(m, BYPASS_ATTR)}
    try:
        model.eval()
        for m in bypass:
            setattr(m, BYPASS_ATTR, True)
        for p in model.parameters():
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for m, mode in modes.items():
            m.training = mode
        for p, flag in grads.items():
            p.requires_grad_(flag)
        for m, flag in bypass.items():
            setattr(m, BYPASS_ATTR, flag)


def _trace(
    model: nn.Module, example_input: torch.Tensor | None
) -> tuple[tp.DependencyGraph, tuple[str, ...]]:
    """One traced forward pass (eval mode, first sample only): torch-pruning's
    ``DependencyGraph`` and the names of the Conv/Linear modules in order of first call."""
    x = default_example_input(model) if example_input is None else example_input
    x = x[:1]  # the graph does not depend on the batch size
    order: list[str] = []
    names = {m: n for n, m in model.named_modules()}

    def record(module: nn.Module, args: object, output: object) -> None:
        if names[module] not in order:
            order.append(names[module])

    hooks = [
        m.register_forward_hook(record)
        for m in model.modules()
        if isinstance(m, _ConvNd | nn.Linear)
    ]
    try:
        graph = tp.DependencyGraph()
        with _tracing(model), _concat_sizes_from_trace() as sizes, _ShuffleRecorder() as sh:
            # filled during the forward pass, read when the index maps are built after it
            graph._gfverify_shuffles = sh.shuffles
            with _tolerant_reshape_mapping(sizes) as unmapped:
                graph.build_dependency(model, example_inputs=(x,), verbose=False)
    finally:
        for h in hooks:
            h.remove()
    unmapped += [n for n in graph.module2node.values() if n.grad_fn in sh.shuffles]
    graph._gfverify_unmapped = _unmapped_region(unmapped)
    return graph, tuple(order)


_CATS = (torch.cat, torch.concat, torch.concatenate)


class _CatSizeRecorder(TorchFunctionMode):
    """Records, for every ``torch.cat`` of the traced forward pass whose inputs all require
    grad, the sizes of its inputs along the cat dimension, keyed by the output's ``grad_fn``
    (the object torch-pruning builds its concat node from)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[object, list[int]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _CATS and isinstance(out, Tensor) and out.grad_fn is not None:
            tensors = args[0] if args else kwargs.get("tensors", ())
            dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
            if all(isinstance(t, Tensor) and t.requires_grad for t in tensors):
                self.sizes[out.grad_fn] = [int(t.shape[dim]) for t in tensors]
        return out


_SPLITS = (torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.Tensor.unflatten)
_SWAPS = (torch.Tensor.transpose, torch.transpose, torch.Tensor.permute, torch.permute)


class _ShuffleRecorder(TorchFunctionMode):
    """Finds the channel shuffles of the traced forward pass: a reshape that splits the channel
    dimension C into (G, C/G) (``view(b, G, C/G, ...)``, G, C/G > 1) whose result then has those
    two dimensions swapped (``transpose(1, 2)`` or a permute that reorders them). Channel c of
    the input lands at position (c mod C/G)·G + c div (C/G): a permutation torch-pruning's index
    maps do not model (they treat the view pair as a flatten, silently, or divide by zero), so
    :func:`_trace` marks both ops as unmapped and :func:`analyze` leaves out the layers whose
    channels pass through them. ``shuffles``: the ``grad_fn`` of both ops of each shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self._splits: set = set()
        self.shuffles: set = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        src = args[0] if args else None
        if not (isinstance(out, Tensor) and isinstance(src, Tensor) and out.grad_fn is not None):
            return out
        if func in _SPLITS and src.dim() >= 2 and out.dim() == src.dim() + 1:
            a, b = out.shape[1], out.shape[2]
            if a > 1 and b > 1 and a * b == src.shape[1] and out.shape[3:] == src.shape[2:]:
                self._splits.add(out.grad_fn)
        elif func in _SWAPS and src.grad_fn in self._splits:
            order = _dim_order(func, src.dim(), args[1:], kwargs or {})
            if order is not None and order.index(1) > order.index(2):
                self.shuffles |= {src.grad_fn, out.grad_fn}
        return out


def _dim_order(func, ndim: int, args: tuple, kwargs: dict) -> list[int] | None:  # noqa: ANN001
    """The source dimension at each output position of a transpose/permute call; ``None`` if
    the arguments are not plain integers."""
    try:
        if func in (torch.Tensor.permute, torch.permute):
            dims = args[0] if len(args) == 1 else args or kwargs["dims"]
            return [int(d) % ndim for d in dims]
        d0, d1 = args if len(args) == 2 else (kwargs["dim0"], kwargs["dim1"])
        order = list(range(ndim))
        order[int(d0) % ndim], order[int(d1) % ndim] = int(d1) % ndim, int(d0) % ndim
        return order
    except (KeyError, TypeError, ValueError):
        return None


@contextmanager
def _concat_sizes_from_trace() -> Iterator[dict]:
    """While active, every concatenation's input sizes are recorded (see
    :class:`_CatSizeRecorder`); the yielded dict maps a ``CatBackward`` to them.

    Why: torch-pruning infers a concat's input channel counts by walking the graph backwards
    with a budget of ``MAX_RECURSION_DEPTH`` (500) steps shared by the whole walk; behind many
    residual blocks (Swin-S/B: 18 blocks before the last patch merging's
    ``torch.cat([x0, x1, x2, x3], -1)``) the budget runs out, every count is ``None``, and
    ``update_concat_index_mapping`` computes ``sum([None, ...])`` before its own ``None``
    check: ``TypeError: unsupported operand type(s) for +: 'int' and 'NoneType'``. The sizes
    the forward pass actually saw are exact and cost nothing to record, so they are handed
    to torch-pruning as ``concat_sizes`` (which it then keeps up to date while pruning)."""
    recorder = _CatSizeRecorder()
    with recorder:
        yield recorder.sizes


@contextmanager
def _tolerant_reshape_mapping(cat_sizes: dict | None = None) -> Iterator[list]:
    """While active, a reshape or concat whose channel index map torch-pruning cannot compute
    (it raises, e.g. ``ZeroDivisionError`` on a channel shuffle ``view(b, g, c/g, h, w)``, or
    ``TypeError`` on a concat whose input sizes it could not infer) is recorded in the yielded
    list instead of aborting the trace; :func:`analyze` then leaves out every layer whose
    channels pass through it. ``cat_sizes`` (from :func:`_concat_sizes_from_trace`) gives a
    concat node its exact input sizes before torch-pruning tries to infer them. A reshape of a
    channel shuffle (its ``grad_fn`` in the graph's ``_gfverify_shuffles``, recorded by
    :class:`_ShuffleRecorder` during the trace) gets no index map at all: the flatten map
    torch-pruning would build is wrong for a permutation and multiplies the indices on every
    pass (ShuffleNetV2 x0.5: 84 s per analysis under load 3, 6 s without it)."""
    failed: list = []
    original = tp_index_mapping.update_reshape_index_mapping
    original_cat = tp_index_mapping.update_concat_index_mapping
    errors = (ZeroDivisionError, ValueError, RuntimeError, IndexError, TypeError)

    def tolerant(graph: tp.DependencyGraph, node: tp.dependency.Node) -> None:
        if node.grad_fn in getattr(graph, "_gfverify_shuffles", ()):
            return
        try:
            original(graph, node)
        except errors:
            failed.append(node)

    def tolerant_cat(graph: tp.DependencyGraph, node: tp.dependency.Node) -> None:
        known = (cat_sizes or {}).get(node.grad_fn)
        op = node.module
        if known is not None and op.concat_sizes is None and len(known) == len(node.inputs):
            op.concat_sizes = list(known)
        try:
            original_cat(graph, node)
        except errors:
            failed.append(node)

    tp_index_mapping.update_reshape_index_mapping = tolerant
    tp_index_mapping.update_concat_index_mapping = tolerant_cat
    try:
        yield failed
    finally:
        tp_index_mapping.update_reshape_index_mapping = original
        tp_index_mapping.update_concat_index_mapping = original_cat


def pruning_group(
    graph: tp.DependencyGraph, module: nn.Module, channels: list[int], remap: bool = True
) -> tp.dependency.Group:
    """torch-pruning's group for removing output ``channels`` of ``module``. torch-pruning
    recomputes the reshape/concat index maps on every call (with the failures of
    :func:`_tolerant_reshape_mapping` recorded, not raised; :func:`analyze` has already left
    out the layers they touch); ``remap=False`` skips that when the graph is unchanged since
    its trace, which makes one :func:`analyze` of a deep net linear instead of quadratic."""
    pruner = graph.get_pruner_of_module(module)
    original = tp_index_mapping.update_index_mapping
    if not remap:
        tp_index_mapping.update_index_mapping = lambda graph: None
    try:
        with _tolerant_reshape_mapping():
            return graph.get_pruning_group(module, pruner.prune_out_channels, channels)
    finally:
        tp_index_mapping.update_index_mapping = original


def _unmapped_region(failed: list) -> set:
    """The failed reshape nodes and every op node joined to them through parameter-free ops
    (the other half of a channel shuffle: ``view → transpose → view``): their index maps are
    not trustworthy."""
    region: set = set()
    stack = list(failed)
    while stack:
        node = stack.pop()
        if node in region:
            continue
        region.add(node)
        for nxt in (*node.inputs, *node.outputs):
            if isinstance(nxt.module, tp.ops._ElementWiseOp | tp.ops._ReshapeOp):
                stack.append(nxt)
    return region


def dependency_graph(
    model: nn.Module, example_input: torch.Tensor | None = None
) -> tp.DependencyGraph:
    """torch-pruning's ``DependencyGraph`` of ``model``, traced in eval mode (flags restored)."""
    return _trace(model, example_input)[0]


def _bn_after(node: tp.dependency.Node) -> tp.dependency.Node | None:
    """The BatchNorm node reached from ``node`` through single-input, single-output
    channel-wise ops only (e.g. ReLU, pooling); ``None`` if the chain branches or ends."""
    current = node
    while len(current.outputs) == 1:
        nxt = current.outputs[0]
        if isinstance(nxt.module, _BatchNorm):
            return nxt
        if not isinstance(nxt.module, tp.ops._ElementWiseOp) or len(nxt.inputs) != 1:
            return None
        current = nxt
    return None


def _param(module: nn.Module, module_name: str, attr: str) -> str | None:
    return f"{module_name}.{attr}" if getattr(module, attr, None) is not None else None


def analyze(model: nn.Module, example_input: torch.Tensor | None = None) -> GraphInfo:
    """Trace ``model`` once and return every producing layer's group, the output layers and the
    coupled groups. Raises :class:`ModelError` for unsupported layers (see module docstring)."""
    return analyze_with_graph(model, example_input)[0]


def analyze_with_graph(
    model: nn.Module, example_input: torch.Tensor | None = None
) -> tuple[GraphInfo, tp.DependencyGraph]:
    """:func:`analyze`, also returning the traced graph (valid until the model changes other
    than through the graph's own pruning groups)."""
    names = {m: n for n, m in model.named_modules()}
    graph, order = _trace(model, example_input)
    rank = {n: i for i, n in enumerate(order)}

    groups: dict[str, FilterGroup] = {}
    output_layers: set[str] = set()
    coupled: dict[tuple[str, ...], None] = {}
    skipped: dict[str, str] = {}
    for name, m in model.named_modules():
        if isinstance(m, _ConvNd) and m.transposed:
            skipped[name] = (
                f"layer {name!r} ({type(m).__name__}) is a transposed conv; filter pruning "
                "covers Conv (any groups), Linear and the norms after them"
            )
    producers = [m for m in graph.module2node if is_producer(m) and m in names]
    for module in sorted(producers, key=lambda m: rank.get(names[m], len(rank))):
        name = names[module]
        found = _layer_group(graph, module, name, names)
        if isinstance(found, str):
            skipped[name] = found
            continue
        group, members, reaches_output = found
        groups[name] = group
        if reaches_output:
            output_layers.add(name)
        if len(members) > 1:
            coupled[tuple(sorted(members, key=lambda n: rank.get(n, len(rank))))] = None
    # a coupled group is prunable only if every member is
    kept_coupled = []
    for grp in coupled:
        bad = [n for n in grp if n in skipped]
        if bad:
            for n in grp:
                if n not in skipped:
                    skipped[n] = f"layer {n!r} is coupled to {bad[0]!r}: {skipped[bad[0]]}"
                    groups.pop(n, None)
                    output_layers.discard(n)
        else:
            kept_coupled.append(grp)
    info = GraphInfo(groups, frozenset(output_layers), tuple(kept_coupled), order, skipped)
    return info, graph


def _what(graph: tp.DependencyGraph, node: tp.dependency.Node, names: dict) -> str:
    """The user's name for what sits at ``node``: a module name, a bare parameter's name (also
    when it only feeds the op at ``node``, e.g. ViT's ``class_token`` through an expand), or the
    op with the module it follows."""
    mod = node.module
    if isinstance(mod, nn.Parameter):
        return graph._param_to_name.get(mod, "a bare parameter")
    if mod in names:
        return names[mod]
    for inp in node.inputs:
        if isinstance(inp.module, nn.Parameter):
            return graph._param_to_name.get(inp.module, "a bare parameter")
    kind = type(mod).__name__.strip("_").replace("Op", "").lower() or "op"
    near = _nearest_module(node, names)
    return f"a {kind} op" + (f" after {near!r}" if near else "")


def _nearest_module(node: tp.dependency.Node, names: dict) -> str | None:
    seen, frontier = set(), [node]
    for _ in range(32):
        nxt = []
        for n in frontier:
            for i in n.inputs:
                if i in seen:
                    continue
                seen.add(i)
                if isinstance(i.module, nn.Module) and i.module in names:
                    return names[i.module]
                nxt.append(i)
        if not nxt:
            return None
        frontier = nxt
    return None


#: The most channel indices torch-pruning may produce while mapping one layer's channels
#: through the graph in :func:`analyze` (the sum of the index lists of its pruning group).
#: Above it the layer is left out, recorded in :attr:`GraphInfo.skipped`.
INDEX_BUDGET = 5_000_000


class _IndexBudgetExceeded(Exception):
    pass


@contextmanager
def _index_budget(limit: int | None) -> Iterator[None]:
    """While active, torch-pruning's ``Group.add_dep`` counts the indices it is handed and
    raises :class:`_IndexBudgetExceeded` once their sum passes ``limit`` (``None``: no limit).

    Why a count and not a clock: some reshapes torch-pruning maps as a flatten (Swin's window
    partition ``view(B, H/w, w, W/w, w, C)``) make every pass multiply the indices, so its
    group walk grows without end (swin_t, last stage: 32 million indices after 10 s; its
    other layers stay under 0.3 million). A wall-clock limit would make the plan depend on
    the machine's load: a busy machine could leave out a layer a quiet one prunes, and the
    trainer would prune a different network. A count is the same on every machine, so the
    same model gives the same plan everywhere, and the layer left out is recorded with the
    reason. The budget is far above any mapping that terminates in torchvision (a flatten
    onto a Linear multiplies by at most 49 there) and lets a hand-written conv → flatten →
    Linear keep about 2.5 million inputs to the Linear; raise :data:`INDEX_BUDGET` for more.
    """
    if limit is None:
        yield
        return
    group_cls = tp.dependency.Group
    original = group_cls.add_dep
    total = [0]

    def counted(self: tp.dependency.Group, dep: object, idxs: list) -> None:
        total[0] += len(idxs)
        if total[0] > limit:
            raise _IndexBudgetExceeded
        original(self, dep, idxs)

    group_cls.add_dep = counted
    try:
        yield
    finally:
        group_cls.add_dep = original


def _layer_group(
    graph: tp.DependencyGraph, module: nn.Module, name: str, names: dict
) -> tuple[FilterGroup, list[str], bool] | str:
    """Layer ``name``'s :class:`FilterGroup`, its coupled members and whether its channels
    reach the model output; or a one-line reason why it cannot be pruned."""
    node = graph.module2node[module]
    pruner = graph.get_pruner_of_module(module)
    width = pruner.get_out_channels(module)
    try:
        with _index_budget(INDEX_BUDGET):
            group = pruning_group(graph, module, list(range(width)), remap=False)
    except _IndexBudgetExceeded:
        return (
            f"layer {name!r}: torch-pruning's index map of its channels exceeded "
            f"{INDEX_BUDGET:,} indices (gfverify.groups.INDEX_BUDGET; a reshape that "
            "multiplies indices, e.g. a window partition)"
        )
    except Exception as e:  # torch-pruning cannot follow the channels
        why = type(e).__name__
        if getattr(graph, "_gfverify_unmapped", None):
            why += " past a reshape it cannot map, e.g. a channel shuffle"
        return f"layer {name!r}: torch-pruning cannot follow its channels ({why})"
    unmapped = getattr(graph, "_gfverify_unmapped", set())
    members: list[str] = []
    tied: list[str] = []
    tied_params: list[str] = []
    ch_groups = 1
    reaches_output = len(node.outputs) == 0
    for item in group.items:
        target = item.dep.target
        tmod = target.module
        handler = item.dep.handler
        consumed = is_producer(tmod) and graph.is_in_channel_pruning_fn(handler)
        if len(target.outputs) == 0 and not consumed:
            reaches_output = True  # the channel itself is (part of) a model output
        if target in unmapped:
            what = (
                "a concatenation whose input sizes torch-pruning could not infer"
                if isinstance(tmod, tp.ops._ConcatOp)
                else "a reshape that torch-pruning cannot map (e.g. a channel shuffle)"
            )
            return (
                f"layer {name!r}: its channels pass through {what} at {_what(graph, target, names)}"
            )
        if isinstance(tmod, _PASS_THROUGH_OPS):
            continue
        if isinstance(tmod, _NORMS):
            if isinstance(tmod, nn.GroupNorm):
                ch_groups = max(ch_groups, tmod.num_groups)
            continue
        tname = names.get(tmod, None) if isinstance(tmod, nn.Module) else None
        if tname is None:
            return (
                f"layer {name!r} shares channels with {_what(graph, target, names)}, which "
                "cannot be pruned with it"
            )
        if is_depthwise(tmod):
            if tname not in tied:
                tied.append(tname)
                tied_params += [
                    p for p in (_param(tmod, tname, "weight"), _param(tmod, tname, "bias")) if p
                ]
                dw_bn = _bn_after(target)
                if dw_bn is not None:
                    bname = names[dw_bn.module]
                    tied.append(bname)
                    tied_params += [
                        p
                        for p in (
                            _param(dw_bn.module, bname, "weight"),
                            _param(dw_bn.module, bname, "bias"),
                        )
                        if p
                    ]
            continue
        if is_grouped(tmod) and tmod.groups == tmod.out_channels:
            return (
                f"layer {name!r} shares channels with grouped conv {tname!r} (groups = "
                f"out_channels = {tmod.groups} != in_channels), which torch-pruning mistakes "
                "for a depthwise conv"
            )
        if is_producer(tmod):
            if is_grouped(tmod):
                ch_groups = max(ch_groups, tmod.groups)
            if graph.is_out_channel_pruning_fn(handler) and tname not in members:
                members.append(tname)
            continue
        return (
            f"layer {name!r} shares channels with module {tname!r} ({type(tmod).__name__}), "
            "which cannot be pruned with it"
        )
    if name not in members:
        members.append(name)
    if width % ch_groups:
        return f"layer {name!r}: {width} channels do not split into {ch_groups} equal groups"
    bn_node = _bn_after(node)
    bn_name = names[bn_node.module] if bn_node is not None else None
    fg = FilterGroup(
        name=name,
        weight=f"{name}.weight",
        bias=_param(module, name, "bias"),
        bn=bn_name,
        bn_weight=_param(bn_node.module, bn_name, "weight") if bn_node else None,
        bn_bias=_param(bn_node.module, bn_name, "bias") if bn_node else None,
        tied=tuple(tied),
        num_filters=width // ch_groups,
        tied_params=tuple(tied_params),
        channel_groups=ch_groups,
    )
    return fg, members, reaches_output


def filter_groups(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    include_classifier: bool = False,
) -> dict[str, FilterGroup]:
    """Prunable layer name -> :class:`FilterGroup`, in forward order.

    Layers whose output channels reach the model output (the classifier producing the logits)
    are left out unless ``include_classifier``. ``example_input`` defaults to
    :func:`default_example_input`. A layer that cannot be pruned (its channels meet a
    transposed conv, a PReLU, a bare parameter, an op torch-pruning cannot map...) is left
    out; :func:`unprunable` says why. Raises :class:`ModelError` when nothing is prunable.
    """
    info = analyze(model, example_input)
    out = {
        n: g for n, g in info.groups.items() if include_classifier or n not in info.output_layers
    }
    if not out:
        why = next(iter(info.skipped.values()), None)
        raise ModelError(
            f"model {type(model).__name__} has no prunable layer" + (f" ({why})" if why else "")
        )
    return out


def unprunable(model: nn.Module, example_input: torch.Tensor | None = None) -> dict[str, str]:
    """Conv/Linear layer name -> one-line reason why it is left out of every pruning plan."""
    return dict(analyze(model, example_input).skipped)


def coupled_groups(
    model: nn.Module, example_input: torch.Tensor | None = None
) -> list[tuple[str, ...]]:
    """Groups of producing layers whose output channels are tied by additions (residual adds),
    each in forward order; the first name is the group's representative. Uncoupled layers
    are not listed."""
    return list(analyze(model, example_input).coupled)


def depthwise_ties(model: nn.Module, groups: dict[str, FilterGroup]) -> dict[str, tuple[str, ...]]:
    """Producing layer -> the depthwise convs tied to its output channels (their BatchNorms
    left out), for the layers that have any: what the official MobileNet ranking counts twice."""
    modules = dict(model.named_modules())
    out = {}
    for name, group in groups.items():
        convs = tuple(t for t in group.tied if is_depthwise(modules[t]))
        if convs:
            out[name] = convs
    return out
