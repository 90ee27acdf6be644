"""The data package's exception and warning (every module of engine/data raises these)."""


class DataError(ValueError):
    """Any problem with the input data: missing folders, unreadable images, inconsistent classes."""


class DataWarning(UserWarning):
    """Unreadable images were skipped during a pass (strict=False)."""
