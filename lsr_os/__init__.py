"""lsr-os: multimodal learned sparse retrieval served from OpenSearch rank_features."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lsr-os")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
