"""The installed package's version, for the public API and the run records."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("infokv")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"
