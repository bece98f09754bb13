"""Sub-commands of the ``gfverify`` CLI beyond check/measures, one module each.

Each module defines ``add_parser(subparsers) -> None`` that adds its sub-command(s) and sets
``func`` to a handler ``(args) -> int``. :func:`gfverify.cli.build_parser` discovers them, so a
new command is one new module here.

Also the pieces every command shares: argument types that refuse bad numbers at parse time
(:func:`positive_int`, :func:`positive_float`), the help formatter that shows defaults, and
:func:`epoch_progress` / :func:`quiet_warnings_in` (progress bars that are quiet off a terminal
and keep library warnings out of their lines).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator
from typing import Any


def add_override_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--set KEY=VALUE [KEY=VALUE ...]``, repeatable, collected in ``args.overrides``."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help=help_text,
    )


# --------------------------------------------------------------------------------------------
# argument types: a bad number is refused while parsing, before any work


def _number(kind: type, text: str, low: float, inclusive: bool) -> Any:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expects {kind.__name__}, got {text!r}") from None
    if value != value or (value < low if inclusive else value <= low):  # NaN fails too
        bound = f">= {low:g}" if inclusive else f"> {low:g}"
        raise argparse.ArgumentTypeError(f"must be {bound}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    return _number(int, text, 1, inclusive=True)


def nonnegative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    return _number(int, text, 0, inclusive=True)


def positive_float(text: str) -> float:
    """argparse type: a finite-or-infinite float > 0 (NaN refused)."""
    return _number(float, text, 0.0, inclusive=False)


# --------------------------------------------------------------------------------------------
# help and parse errors


class HelpFormatter(argparse.HelpFormatter):
    """Shows ``(default: X)`` after an option's help, unless the help already names its default
    or there is none worth showing (None, False, an empty list, a suppressed one)."""

    @staticmethod
    def _shows_default(action: argparse.Action) -> bool:
        default = action.default
        return not (
            "default" in (action.help or "").lower()
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or default == []
            or not action.option_strings
            or isinstance(action, (argparse._StoreTrueAction, argparse._VersionAction))
        )

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not self._shows_default(action):
            return text
        return f"{text} (default: %(default)s)" if text.strip() else "default: %(default)s"

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is not argparse.SUPPRESS and not (action.help or "").strip():
            if self._shows_default(action):  # an option without help still shows its default
                import copy

                action = copy.copy(action)
                action.help = "default: %(default)s"
        return super()._format_action(action)


class Parser(argparse.ArgumentParser):
    """ArgumentParser with :class:`HelpFormatter` and a one-line parse error: ``PROG: error:
    MESSAGE (see 'PROG --help')`` on stderr, exit 2 (argparse's usage block is left out)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        one = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {one} (see '{self.prog} --help')\n")


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string a parser accepts, e.g. ``{"--runs-dir", "--no-resume", "-h"}``."""
    return {s for action in parser._actions for s in action.option_strings}


# --------------------------------------------------------------------------------------------
# checks before any work


def check_runnable(config: Any, devices: Any = None) -> None:
    """Every check a run can fail without data or training, raised as one-line GfverifyErrors
    before a run directory exists: the config (data mapping, epoch plan, measure), the model
    (a registered name, or an importable ``model.factory``) and the device (``devices``, when
    given, replace ``config.device``, as a sweep does)."""
    from gfverify.errors import ModelError
    from gfverify.models import MODELS, load_factory
    from gfverify.train import check_config
    from gfverify.train.protocol import resolve_device

    check_config(config)
    if config.model.factory:
        load_factory(config.model.factory)
    elif config.model.name not in MODELS:
        raise ModelError(
            f"config key 'model.name'={config.model.name!r} is not a registered model;"
            f" valid names: {', '.join(sorted(MODELS))} (or set model.factory='pkg.mod:fn')"
        )
    for device in devices or [config.device]:
        resolve_device(device)


def check_grid(configs: Any, devices: Any = None) -> None:
    """:func:`check_runnable` for every grid point before the first run; the first failure is
    raised naming its grid point and how many points fail the same way."""
    from gfverify.config import flatten_config
    from gfverify.errors import GfverifyError

    configs = list(configs)
    failures: list[tuple[int, str, type]] = []
    for i, config in enumerate(configs):
        try:
            check_runnable(config, devices)
        except GfverifyError as exc:
            failures.append((i, str(exc), type(exc)))
    if not failures:
        return
    index, message, kind = failures[0]
    same = sum(1 for _, m, _k in failures if m == message)
    flat = flatten_config(configs[index])
    point = ", ".join(f"{k}={flat[k]!r}" for k in ("model.name", "measure.name", "data.name"))
    more = f"; {same} of {len(configs)} grid points fail so" if len(configs) > 1 else ""
    others = len(failures) - same
    also = f" ({others} more fail otherwise)" if others else ""
    raise kind(f"grid point {index} ({point}): {message}{more}{also}; nothing was run")


# --------------------------------------------------------------------------------------------
# progress


def progress_wanted(quiet: bool = False, stream: Any = None) -> bool:
    """Bars only on a terminal: off with ``quiet``, when the stream is not a TTY, or when
    ``GFVERIFY_NO_PROGRESS`` is set (anything but "" or "0")."""
    import os

    stream = sys.stderr if stream is None else stream
    if quiet or os.environ.get("GFVERIFY_NO_PROGRESS", "") not in ("", "0"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@contextlib.contextmanager
def quiet_warnings_in(bar: Any) -> Iterator[None]:
    """While ``bar`` (a tqdm) is shown, Python warnings are written above it with
    ``tqdm.write`` (one line each: ``Category: message``) instead of into its line."""
    if getattr(bar, "disable", True):
        yield
        return
    previous = warnings.showwarning

    def show(message: Any, category: type, filename: str, lineno: int, *_: Any) -> None:
        text = " ".join(str(message).split())
        bar.write(f"{category.__name__}: {text}", file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


@contextlib.contextmanager
def epoch_progress(
    total: int, initial: int = 0, desc: str = "epochs", enabled: bool = True
) -> Iterator[Any]:
    """A per-epoch tqdm bar (ETA from the epochs done in this process) on stderr.

    Yields ``advance(record)``: call it once per logged epoch; it moves the bar to the record's
    ``epoch`` and shows its train loss / accuracies. Disabled (a no-op) when not ``enabled``.
    """
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        initial=min(initial, total),
        desc=desc,
        unit="epoch",
        disable=not enabled or total <= 0,
        file=sys.stderr,
        dynamic_ncols=True,
    )

    def advance(record: dict[str, Any]) -> None:
        epoch = record.get("epoch")
        step = int(epoch) - bar.n if isinstance(epoch, int) else 1
        post = {k: record[k] for k in ("train_loss", "val_acc", "test_acc") if k in record}
        if post:
            bar.set_postfix({k: f"{v:.4g}" for k, v in post.items() if isinstance(v, float)})
        bar.update(max(step, 0))

    try:
        with quiet_warnings_in(bar):
            yield advance
    finally:
        bar.close()


class CostEta:
    """ETA of a list of tasks of known relative cost (e.g. claims): after tasks of total cost
    ``c_done`` took ``t`` seconds, the rest is estimated as ``t · c_left / c_done``, so one
    expensive first task does not make every later one look as expensive.

    ``costs`` maps a task id to its relative cost (seconds from an earlier run are ideal: see
    :func:`claim_costs_from`); ids without one cost the median of the known costs (1 if none).
    """

    def __init__(self, ids: Any, costs: Any = None) -> None:
        import statistics

        self.ids = [str(i) for i in ids]
        known = {str(k): float(v) for k, v in dict(costs or {}).items() if float(v) > 0}
        fallback = statistics.median(known.values()) if known else 1.0
        self.cost = {i: known.get(i, fallback) for i in self.ids}
        self.done: list[str] = []
        self.seconds = 0.0

    def finished(self, task_id: str, seconds: float) -> None:
        """Record one finished task and how long it took."""
        self.done.append(str(task_id))
        self.seconds += max(float(seconds), 0.0)

    def remaining_s(self) -> float | None:
        """Estimated seconds left (None before the first task finished)."""
        c_done = sum(self.cost[i] for i in self.done if i in self.cost)
        if not self.done or c_done <= 0:
            return None
        left = [i for i in self.ids if i not in set(self.done)]
        return self.seconds * sum(self.cost[i] for i in left) / c_done

    def line(self) -> str:
        """``"3/30 done, about 4 min left"`` (``"3/30 done"`` before an estimate exists)."""
        text = f"{len(self.done)}/{len(self.ids)} done"
        left = self.remaining_s()
        if left is None:
            return text
        nice = f"{left:.0f} s" if left < 90 else f"{left / 60:.0f} min"
        return f"{text}, about {nice} left"


def claim_costs_from(path: Any) -> dict[str, float]:
    """Per-claim seconds recorded in an earlier ``check --json`` file (``details.claim_seconds``
    or ``details.seconds``, the largest per claim id); {} if it cannot be read."""
    import json
    from pathlib import Path

    try:
        results = json.loads(Path(path).read_text(encoding="utf-8")).get("results", [])
    except (OSError, ValueError, AttributeError):
        return {}
    costs: dict[str, float] = {}
    for r in results if isinstance(results, list) else []:
        if not isinstance(r, dict) or not isinstance(r.get("details"), dict):
            continue
        d = r["details"]
        sec = d.get("claim_seconds", d.get("seconds"))
        if isinstance(sec, (int, float)) and sec > 0:
            costs[str(r.get("id"))] = max(costs.get(str(r.get("id")), 0.0), float(sec))
    return costs


def builtin_claim_costs() -> dict[str, float]:
    """Per-claim seconds of the built-in check measured once (``gfverify/claims/costs.json``):
    the relative weights of the check's ETA on a fresh machine; {} if the file is missing."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "claims" / "costs.json"
    try:
        return {str(k): float(v) for k, v in json.loads(path.read_text())["seconds"].items()}
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return {}
