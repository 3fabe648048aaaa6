"""Data layer: layouts -> one :class:`Case` type, validation, preprocessing, cache, synthesis."""

from __future__ import annotations

from cascadeseg.data.case import MODALITIES, Case, Meta

__all__ = ["MODALITIES", "Case", "Meta"]
