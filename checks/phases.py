"""Markers shared by the check modules."""

from __future__ import annotations

import pytest

#: general checks: part of the health run and of every phase's validation (`-m fase2` runs them)
ALL_PHASES = [pytest.mark.health, pytest.mark.fase1, pytest.mark.fase2, pytest.mark.fase3]
