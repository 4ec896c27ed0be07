"""The package's version, in a module of its own so that every layer can read it (the package's
`__init__` is the public API, at the top)."""

__version__ = "0.1.0"
