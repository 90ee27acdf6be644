"""The data package's exception and warning (every module of engine/data raises these)."""

NAMED_SKIPPED = 5  # skipped images or links named in a warning, an error or a JSON record


class DataError(ValueError):
    """Any problem with the input data: missing folders, unreadable images, inconsistent classes."""


class DataWarning(UserWarning):
    """Unreadable images, or links the scan does not follow, were skipped (strict=False)."""
