"""Binary roadwork classifiers for street-level photos."""

__version__ = "0.1.0"
