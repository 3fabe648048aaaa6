"""Shared fixtures: tiny cases, few threads (the suite runs on two cores)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

from cascadeseg.data.case import Case
from toy import make_tiny_case

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_case() -> Case:
    """A 32x32x24 case with every label present."""
    return make_tiny_case()


@pytest.fixture
def tiny_cases() -> list[Case]:
    """Four small cases, the last one without enhancing tumour."""
    return [make_tiny_case(seed=i, case_id=f"toy_{i:03d}", with_et=i != 3) for i in range(4)]
