"""The installed ml3 package's version (``ml3core.__version__``, ``ml3 --version``, every bundle's ``versions``)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ml3")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
