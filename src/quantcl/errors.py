"""Errors a user can cause. Every one subclasses :class:`QuantCLError`.

Messages say what was wrong and what is accepted, e.g.
``UnknownNameError: unknown precision 'int3'; valid: fp32, bf16, ...``.
"""

from __future__ import annotations

__all__ = [
    "QuantCLError",
    "ConfigError",
    "UnknownNameError",
    "UnsupportedDeviceError",
    "StateError",
    "UnsafeCodeError",
    "HubUnreachableError",
    "RunsFailedError",
]


class QuantCLError(Exception):
    """Base class of every error a user of quantcl can cause."""


class ConfigError(QuantCLError, ValueError):
    """An argument or config value is invalid (wrong range, type, or combination)."""


class UnknownNameError(ConfigError, KeyError):
    """A name (precision, strategy, evaluator, ...) is not one of the known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnsupportedDeviceError(QuantCLError, RuntimeError):
    """The installed backend (e.g. bitsandbytes) cannot run on the requested device."""


class StateError(QuantCLError, RuntimeError):
    """Saved state is missing, truncated, tampered with, or from another class/version."""


class UnsafeCodeError(QuantCLError, PermissionError):
    """Running model-generated code was requested without the explicit opt-in."""


class HubUnreachableError(ConfigError, ConnectionError):
    """A model or dataset had to come from the Hugging Face Hub, which could not be reached
    (offline mode, no network) and the local cache does not hold it."""


class RunsFailedError(QuantCLError, RuntimeError):
    """Runs of a study failed on a parallel executor (``"process"``, ``"ray"``, your own); the
    others ran to the end, and each failed run's ``error.json`` holds its traceback. Running the
    study again resumes them."""
