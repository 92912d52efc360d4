"""The one error type that user-facing commands turn into a single stderr line and exit code 2."""


class FtmixError(ValueError):
    """Bad input: unknown model or GPU, impossible mixture, bad numbers, malformed data."""
