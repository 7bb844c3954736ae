"""Exceptions the engine raises for problems the user can fix."""


class HybridInferError(Exception):
    """Base class: a problem with the job's configuration or inputs, with a fix in its text."""


class ConfigurationError(HybridInferError):
    """A setting, address or name is wrong or unreachable."""


class InputError(HybridInferError):
    """An input path, column or format is missing or not what the job needs."""


class OutputError(HybridInferError):
    """The output path would destroy data (the input, or files the engine did not write)
    or cannot be written."""


class ModelError(HybridInferError):
    """A model name, factory or weights file cannot be used."""


class PoolError(HybridInferError):
    """The actor pool is missing, stopped, or serves a different model."""
