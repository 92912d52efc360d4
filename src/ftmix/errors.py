"""The one error type that user-facing commands turn into a single stderr line and exit code 2."""


class FtmixError(ValueError):
    """Bad input: unknown model or GPU, impossible mixture, bad numbers, malformed data."""


def first_problem(exc, where: str = "config") -> str:
    """A pydantic ValidationError's first problem as ``key.path: message`` (one line for the user)."""
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or where
    return f"{loc}: {err['msg'].removeprefix('Value error, ')}"
