"""Integration tests share the manifest builders of the unit tests (tests/unit/kube_kit.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
