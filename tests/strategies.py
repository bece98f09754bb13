"""Hypothesis strategies: small nets, losses and temperatures drawn as the issues specify."""

from hypothesis import strategies as st

from gfverify.flow import LossSpec
from gfverify.models.small import SMOOTH_ACTIVATIONS, SmallNetSpec


@st.composite
def small_nets(draw, max_width: int = 16, kinds=("mlp", "cnn")) -> SmallNetSpec:
    """MLPs and CNNs of width 1–16, depth 1–3, smooth activations, optional BN (eval mode),
    a residual block and a depthwise-separable block (CNNs)."""
    kind = draw(st.sampled_from(kinds))
    depth = draw(st.integers(1, 3))
    widths = tuple(draw(st.lists(st.integers(1, max_width), min_size=depth, max_size=depth)))
    cnn = kind == "cnn"
    return SmallNetSpec(
        kind=kind,
        widths=widths,
        activation=draw(st.sampled_from(sorted(SMOOTH_ACTIVATIONS))),
        batchnorm=draw(st.booleans()),
        residual=cnn and draw(st.booleans()),
        depthwise=cnn and draw(st.booleans()),
        in_channels=draw(st.integers(1, 3)),
        image_size=draw(st.integers(3, 5)),
        num_classes=draw(st.integers(2, 4)),
        seed=draw(st.integers(0, 2**16)),
    )


def losses() -> st.SearchStrategy[LossSpec]:
    """Cross-entropy or MSE with a temperature drawn log-uniformly-ish from [0.5, 200]."""
    temps = st.sampled_from([0.5, 1.0, 2.0, 5.0, 20.0, 200.0]) | st.floats(0.5, 200.0)
    return st.builds(LossSpec, st.sampled_from(["cross_entropy", "mse"]), temps)
