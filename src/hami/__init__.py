"""Hami: GPU-sharing scheduling for Kubernetes, HAMi-compatible."""

__version__ = "0.1.0"
