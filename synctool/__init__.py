"""synctool: make one storage backend an exact mirror of another."""

__version__ = "0.1.0"
