"""Rollback and validation toolkit for a multi-tenant SaaS API released in phases (FASE 1-3)."""

from __future__ import annotations

__version__ = "0.1.0"
