"""Shared test settings: hypothesis profiles and single-threaded torch for tiny nets.

Profiles: ``dev`` (default, random) and ``ci`` (derandomized: the same examples every run).
Select with ``HYPOTHESIS_PROFILE=ci``; the Makefile's test target does.
"""

import os

import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(1)  # tiny nets: threading costs more than it gains (and xdist uses cores)

settings.register_profile(
    "dev", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
