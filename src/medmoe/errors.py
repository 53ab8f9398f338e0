"""Exceptions raised by medmoe. Each names the file or value at fault and what was expected."""

from __future__ import annotations


class MedMoEError(Exception):
    """Base class of every error medmoe raises on purpose."""


class InvalidInputError(MedMoEError, ValueError):
    """An argument, a tensor shape or a config value is not what the function expects."""


class CorruptFileError(MedMoEError, OSError):
    """A file exists but cannot be read as what it claims to be (truncated DICOM, bad NIfTI, ...)."""


class MissingFileError(MedMoEError, FileNotFoundError):
    """An image, manifest, shard or dataset folder that does not exist."""


class NotAModelDirectoryError(MedMoEError, FileNotFoundError):
    """A directory given as a saved model lacks `config.json` / `model.safetensors` or they are unreadable."""


class DataLoadError(MedMoEError):
    """Training stopped because a rank could not read its next batches (its shards or files broke); a
    checkpoint was written first."""
