"""The base of every error caused by the user's input rather than by a bug."""


class RoadworkError(ValueError):
    """A problem with the input (data, configuration, image, bundle); the CLI prints it without a traceback."""
