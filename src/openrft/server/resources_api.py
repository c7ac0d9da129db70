"""Datasets and evaluators as API resources (uploaded files, or built-ins by name)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
