"""Figure: Hv three ways on a conv net with BatchNorm (eval mode), float64 (claim H1).

Left: every entry of Hg by double backward and by central finite differences of g (Richardson
extrapolated) against torch.func. Right: the finite-difference error vs ε on log-log axes with
a slope-2 reference. Run: ``python docs/hvp_agreement.py`` -> docs/hvp_agreement.png
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gfverify.claims.identities import hvp_agreement  # noqa: E402
from gfverify.claims.problems import builtin_problems  # noqa: E402


def main() -> Path:
    problem = builtin_problems()[0]  # conv + BN (eval) + residual + depthwise, tanh, CE T=5
    r = hvp_agreement(problem, problem.state.g, "g")
    d = r.details
    ref = np.array(d["hv_torch_func"])
    dbl = np.array(d["hv_double_backward"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
    a.scatter(
        ref, dbl, s=6, label=f"double backward (rel. err {d['rel_error_double_backward']:.1e})"
    )
    lim = [ref.min(), ref.max()]
    a.plot(lim, lim, "k--", lw=0.8)
    a.set_xlabel("Hg entry, torch.func (reverse-over-reverse)")
    a.set_ylabel("Hg entry, other method")
    a.set_title(f"{problem.name}: {ref.size} entries, float64")
    a.legend(
        title=f"FD + Richardson rel. err {d['rel_error_fd_richardson']:.1e}",
        fontsize=8,
        title_fontsize=8,
    )
    eps, err = np.array(d["fd_steps"]), np.array(d["fd_rel_errors"])
    b.loglog(eps, err, "o-", label=f"central FD, observed order {d['fd_observed_order']:.2f}")
    b.loglog(eps, err[0] * (eps / eps[0]) ** 2, "k:", label="slope 2")
    b.set_xlabel("ε")
    b.set_ylabel("‖Hg_FD − Hg‖ / ‖Hg‖")
    b.legend(fontsize=8)
    fig.tight_layout()
    out = Path(__file__).with_suffix(".png")
    fig.savefig(out, dpi=120)
    print(
        f"wrote {out}; double backward {d['rel_error_double_backward']:.2e}, "
        f"FD-Richardson {d['rel_error_fd_richardson']:.2e}, order {d['fd_observed_order']:.3f}"
    )
    return out


if __name__ == "__main__":
    main()
