"""Errors the user can act on. Each message says what to fix."""


class GrpoError(Exception):
    """Base class: caught by the CLI and printed as one line, no traceback."""


class ConfigError(GrpoError):
    pass


class ModelLoadError(GrpoError):
    pass


class DataError(GrpoError):
    pass


class CheckpointError(GrpoError):
    pass


class EngineError(GrpoError):
    pass
