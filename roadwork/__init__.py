"""Binary roadwork classifiers for street-level photos."""

__version__ = "0.2.0"
