"""Exceptions raised by mfrec. Each names the problem and, where possible, the fix."""


class MfrecError(Exception):
    """Base class for mfrec's own errors."""


class DataError(MfrecError):
    """Input data is missing, malformed or fails verification."""


class DownloadError(DataError):
    """A dataset could not be downloaded."""


class ChecksumError(DataError):
    """Downloaded or extracted bytes do not match the expected checksum."""


class ConfigError(MfrecError):
    """A parameter is invalid (bad device, bad fraction, ...)."""


class TrainingError(MfrecError):
    """Training diverged or could not run."""


class RequestError(MfrecError):
    """A served model's request is refused (HTTP 400); the message names the problem."""
