"""``python -m benchmarks [--quick] [--only NAME,...] [--out PATH] [--no-merge]``.

Discovers every module ``benchmarks/bench_<name>.py``, calls its ``run(quick)`` in turn and
records the returned dict, or ``{"error": ...}`` when it raises, so one failing benchmark never
loses the others. Results go to ``benchmarks/results/<machine>.json`` (written atomically after
every benchmark) with an environment block, and a markdown summary table to the same path with
``.md``. Entries already in that file for benchmarks not run now are kept, so running one
benchmark with ``--only`` does not erase the others' latest numbers; ``--no-merge`` starts over.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import pkgutil
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks import common

PREFIX = "bench_"
SCHEMA = 1
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def discover(package: str = "benchmarks") -> dict[str, str]:
    """``{name: module}`` for every module ``<package>.bench_<name>``, sorted by name.

    Modules are found by file name only and imported when run, so a benchmark that fails to
    import is recorded as an error like any other failure.
    """
    pkg = importlib.import_module(package)
    found = {
        info.name[len(PREFIX) :]: f"{package}.{info.name}"
        for info in pkgutil.iter_modules(pkg.__path__)
        if info.name.startswith(PREFIX) and not info.ispkg
    }
    return dict(sorted(found.items()))


def select(available: Mapping[str, str], only: str | None) -> dict[str, str]:
    """The benchmarks named in the comma-separated ``only`` (all when ``None``).

    A name may be given with or without the ``bench_`` prefix; an unknown name raises
    ``KeyError`` naming it and the available ones.
    """
    if not only:
        return dict(available)
    chosen: dict[str, str] = {}
    for raw in only.split(","):
        name = raw.strip().removeprefix(PREFIX)
        if not name:
            continue
        if name not in available:
            raise KeyError(
                f"unknown benchmark {name!r}; available: {', '.join(available) or '(none)'}"
            )
        chosen[name] = available[name]
    return chosen


def run_one(module: str, quick: bool) -> dict[str, Any]:
    """Import ``module``, call ``run(quick=quick)`` and wrap the outcome with run metadata.

    Returns ``{"quick", "date", "git", "wall_s", "load_average_start", "load_average_end",
    "peak_rss_mb", "result": dict}`` or the same with ``"error"`` (``"Type: message"``) and
    ``"traceback"`` instead of ``"result"``. A result that is not a JSON-serialisable dict is
    an error too. ``peak_rss_mb`` is the process's peak so far (benchmarks run in one process).
    """
    entry: dict[str, Any] = {
        "quick": quick,
        "date": common.now_iso(),
        "git": common.git_commit(),
        "load_average_start": common.load_average(),
    }
    start = time.perf_counter()
    try:
        result = importlib.import_module(module).run(quick=quick)
        if not isinstance(result, dict):
            raise TypeError(f"run() returned {type(result).__name__}, expected dict")
        json.dumps(result, allow_nan=True)  # raises TypeError on anything not serialisable
        entry["result"] = result
    except Exception as exc:  # noqa: BLE001 - one benchmark's failure must not stop the others
        entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["traceback"] = traceback.format_exc()
    entry["wall_s"] = time.perf_counter() - start
    entry["load_average_end"] = common.load_average()
    entry["peak_rss_mb"] = common.peak_rss_mb()
    return entry


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` via a temporary file in the same folder + rename.

    A reader sees the old file or the new one, never a half-written one; on any failure the
    old file is left as it was and the temporary file is removed.
    """
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_previous(path: Path) -> dict[str, Any]:
    """The ``benchmarks`` entries of an earlier results file, or ``{}`` if none is readable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    entries = data.get("benchmarks") if isinstance(data, dict) else None
    return dict(entries) if isinstance(entries, dict) else {}


def _flatten(prefix: str, value: Any, rows: list[tuple[str, Any]]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, rows)
    elif isinstance(value, (list, tuple)) and any(isinstance(v, Mapping) for v in value):
        for i, v in enumerate(value):
            _flatten(f"{prefix}[{i}]", v, rows)
    else:
        rows.append((prefix, value))


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        text = str(value)
    elif isinstance(value, float):
        text = f"{value:.4g}" if math.isfinite(value) else str(value)
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_fmt(v) for v in value) + "]"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(entries: Mapping[str, Mapping[str, Any]]) -> str:
    """A ``| benchmark | key | value |`` table of each entry's headline numbers.

    A result's top-level ``summary`` dict is shown if it has one, else every leaf of the
    result (nested keys joined with dots); a failed benchmark shows its error message.
    """
    lines = ["| benchmark | key | value |", "|---|---|---|"]
    for name, entry in entries.items():
        if "error" in entry:
            lines.append(f"| {name} | error | {_fmt(entry['error'])} |")
            continue
        result = entry.get("result", {})
        shown = result["summary"] if isinstance(result.get("summary"), Mapping) else result
        rows: list[tuple[str, Any]] = []
        _flatten("", shown, rows)
        rows.append(("wall_s", entry.get("wall_s")))
        for key, value in rows:
            lines.append(f"| {name} | {_fmt(key)} | {_fmt(value)} |")
    return "\n".join(lines) + "\n"


def _document(env: Mapping[str, Any], entries: Mapping[str, Any]) -> dict[str, Any]:
    return {"schema": SCHEMA, "environment": dict(env), "benchmarks": dict(entries)}


def _markdown_file(env: Mapping[str, Any], entries: Mapping[str, Any]) -> str:
    git = env.get("git") or {}
    head = (
        f"# Benchmarks on `{env.get('machine')}`\n\n"
        f"Latest run {env.get('date')}, torch {env.get('torch')}, device {env.get('device')}, "
        f"{env.get('torch_threads')} torch threads, load average {env.get('load_average')}, "
        f"commit {str(git.get('commit'))[:12]}{' (dirty)' if git.get('dirty') else ''}.\n\n"
    )
    return head + markdown_table(entries)


def run_benchmarks(
    modules: Mapping[str, str],
    quick: bool = False,
    out: Path | None = None,
    merge: bool = True,
) -> dict[str, Any]:
    """Run each module in ``modules`` (``{name: module}``) in order and return the document.

    When ``out`` is given, the JSON document (and its ``.md`` table) is rewritten atomically
    after every benchmark, merged with ``out``'s earlier entries when ``merge`` is true.
    """
    env = common.environment()
    entries: dict[str, Any] = load_previous(out) if (out is not None and merge) else {}
    for name, module in modules.items():
        print(f"[benchmarks] running {name} ({module}, quick={quick})", file=sys.stderr)
        entry = run_one(module, quick)
        entries[name] = entry
        status = f"error: {entry['error']}" if "error" in entry else "ok"
        print(f"[benchmarks] {name}: {status} ({entry['wall_s']:.1f} s)", file=sys.stderr)
        if out is not None:
            write_json_atomic(out, _document(env, entries))
            write_text_atomic(out.with_suffix(".md"), _markdown_file(env, entries))
    return _document(env, entries)


def main(argv: Sequence[str] | None = None, package: str = "benchmarks") -> int:
    """Command-line entry point; returns the exit status (1 if any benchmark failed)."""
    summary = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=summary)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--only", metavar="NAME,...", help="comma-separated benchmark names")
    parser.add_argument("--out", type=Path, help="JSON path (default results/<machine>.json)")
    parser.add_argument("--no-merge", action="store_true", help="drop earlier entries in --out")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)

    available = discover(package)
    if args.list:
        print("\n".join(f"{name}\t{module}" for name, module in available.items()))
        return 0
    try:
        chosen = select(available, args.only)
    except KeyError as exc:
        parser.error(str(exc.args[0]))
    out = args.out if args.out is not None else RESULTS_DIR / f"{common.machine_name()}.json"

    doc = run_benchmarks(chosen, quick=args.quick, out=out, merge=not args.no_merge)
    ran = {name: doc["benchmarks"][name] for name in chosen}
    print(markdown_table(ran))
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 1 if any("error" in e for e in ran.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
