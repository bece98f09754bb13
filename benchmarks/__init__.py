"""Benchmarks for gfverify: each ``bench_<topic>.py`` exposes ``run(quick: bool = False) -> dict``.

Run them all with ``python -m benchmarks`` (see ``benchmarks/README.md``).
"""
