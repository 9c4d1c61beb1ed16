"""wmhseg: white matter hyperintensity segmentation from T1-weighted or FLAIR MRI."""

import logging
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wmhseg")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# The library logs nothing unless the application configures logging.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__"]
