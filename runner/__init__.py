"""xrun: declarative, hermetic, attested ML experiment runner."""

__version__ = "0.1.0"
