"""Claim records and the claim registry.

A claim is a function ``run(context) -> list[ClaimResult]`` registered under a stable id from
spec/claims.md (E2–E5, H1, L1, L2, T1, T2, G1, M-<name>, I1, P1, P2, S1–S6, F1). Identity claims
return ``passed`` True/False; statistical claims also carry a verdict (supported, contradicted
or inconclusive) in ``verdict``.

Two verdicts say a claim did not produce a result, each with its one-line ``details["reason"]``
and ``passed`` False (they are neither a pass nor a failure of the paper's statement):

- ``error``: the claim raised (:func:`error_record`); ``gfverify check`` goes on and exits 2.
- ``skipped``: the claim chose not to run (:class:`ClaimSkipped`, e.g. a gradient-flow
  integration estimated over its time budget); exit status unaffected.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from gfverify.errors import GfverifyError

ClaimKind = Literal["identity", "statistical"]
Verdict = Literal["pass", "fail", "supported", "contradicted", "inconclusive", "error", "skipped"]

#: Version of the JSON written by ``gfverify check --json``; the report refuses other versions.
SCHEMA_VERSION = 1


@dataclass
class ClaimResult:
    """The outcome of checking one claim on one case (a net, a subset, a setting)."""

    id: str
    statement: str
    kind: ClaimKind
    measured: float | None
    expected: float | None
    error: float | None
    tolerance: float | None
    passed: bool
    details: dict[str, Any] = field(default_factory=dict)
    case: str = ""
    verdict: Verdict | None = None

    def __post_init__(self) -> None:
        if self.verdict is None:
            self.verdict = "pass" if self.passed else "fail"

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite floats become strings: 'nan', 'inf')."""
        return _json_safe(asdict(self))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        try:
            return _json_safe(value.item())
        except (ValueError, RuntimeError):
            pass
    return value


class ClaimSkipped(Exception):
    """Raised inside a claim that decides not to run; the message is the one-line reason."""


def one_line(exc: BaseException) -> str:
    """``Type: message`` of an exception on one line (whitespace collapsed, 300 chars at most)."""
    text = " ".join(str(exc).split())
    reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return reason if len(reason) <= 300 else reason[:297] + "..."


def error_record(
    claim: Claim, exc: BaseException, seconds: float | None = None, case: str = ""
) -> ClaimResult:
    """The record of a claim that raised ``exc`` (verdict ``error``) or skipped itself
    (:class:`ClaimSkipped`, verdict ``skipped``): no numbers, the reason in ``details``."""
    skipped = isinstance(exc, ClaimSkipped)
    reason = " ".join(str(exc).split()) if skipped else one_line(exc)
    details: dict[str, Any] = {"reason": reason}
    if seconds is not None:
        details["seconds"] = seconds
    return ClaimResult(
        id=claim.id,
        statement=claim.statement,
        kind=claim.kind,
        measured=None,
        expected=None,
        error=None,
        tolerance=None,
        passed=False,
        details=details,
        case=case or ("skipped" if skipped else "error"),
        verdict="skipped" if skipped else "error",
    )


@dataclass(frozen=True)
class Claim:
    """A registered claim: stable id, one-sentence statement, kind and the function checking it."""

    id: str
    statement: str
    kind: ClaimKind
    run: Callable[[Any], list[ClaimResult]]
    group: str = "identity"


CLAIMS: dict[str, Claim] = {}


def register(
    id: str, statement: str, kind: ClaimKind = "identity", group: str = "identity"
) -> Callable[[Callable[[Any], list[ClaimResult]]], Callable[[Any], list[ClaimResult]]]:
    """Decorator adding a claim-checking function to :data:`CLAIMS` under ``id``."""

    def wrap(fn: Callable[[Any], list[ClaimResult]]) -> Callable[[Any], list[ClaimResult]]:
        if id in CLAIMS:
            raise ValueError(f"claim id {id!r} registered twice")
        CLAIMS[id] = Claim(id=id, statement=statement, kind=kind, run=fn, group=group)
        return fn

    return wrap


def select_claims(spec: str | Iterable[str], groups: Iterable[str] | None = None) -> list[Claim]:
    """Claims named by ``spec`` ('all', a group name, or comma-separated ids/prefixes)."""
    load_all_claims()
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    chosen: list[Claim] = []
    for name in names:
        if name == "all":
            matches = [c for c in CLAIMS.values() if groups is None or c.group in set(groups)]
        else:
            matches = [
                c
                for c in CLAIMS.values()
                if c.id == name or c.group == name or c.id.startswith(name + "-")
            ]
        if not matches:
            valid = ", ".join(sorted(CLAIMS))
            raise GfverifyError(f"unknown claim {name!r}; valid ids: {valid}")
        chosen += [c for c in matches if c not in chosen]
    return chosen


def load_all_claims() -> None:
    """Import every module that registers claims (registration happens at import)."""
    import importlib
    import pkgutil

    import gfverify.claims as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in ("base", "numerics", "problems", "experiment", "stats", "paper_runs"):
            importlib.import_module(f"gfverify.claims.{info.name}")
