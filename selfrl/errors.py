"""User-facing errors: one line that names the problem; the CLI prints it and exits non-zero."""


class SelfRLError(Exception):
    """Base class of errors that are the user's input, not a bug: printed as one line, exit code 2."""


class ConfigError(SelfRLError):
    pass


class TaskError(SelfRLError):
    pass


class ModelError(SelfRLError):
    pass
