"""Named exceptions that callers are expected to catch."""

from __future__ import annotations


class LongDocError(Exception):
    """Base class of every error longdoc raises on purpose."""


class DataError(LongDocError, ValueError):
    """Input documents are malformed: missing columns, duplicate ids, unreadable files."""


class ConfigError(LongDocError, ValueError):
    """A configuration value is out of range or inconsistent."""


class ModelLoadError(LongDocError):
    """A model directory is missing parts, has mismatching parts, or holds files we refuse to read."""
