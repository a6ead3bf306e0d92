"""Errors meant for the user: each message says what went wrong and what to do about it.

The CLI prints them without a traceback and exits 2; the UI turns them into `gr.Error`.
"""


class FinetuneError(Exception):
    """Base class: a problem the user can act on."""


class ConfigError(FinetuneError):
    """A setting has a bad value, or a config file has unknown keys."""


class ModelError(FinetuneError):
    """A model could not be found or loaded."""


class DataError(FinetuneError):
    """The data cannot be used for training as it is."""


class RunError(FinetuneError):
    """A run directory is missing, busy or in a state that does not allow the action."""


class AccessError(FinetuneError):
    """The caller may not do this (a visitor asking for what only the owner may do)."""


class LimitError(FinetuneError):
    """A visitor limit was reached (input too long, too many requests, too many at once)."""


class DeviceMemoryError(FinetuneError):
    """The GPU has not enough free memory for what was asked (busy training, or too small)."""
