"""Exceptions of the library.

Every failure a user can cause or fix is an `LsrOsError`: the CLI prints its message as one
line and exits with its `exit_code`, so messages must name the file, line, id or URL at fault.

Exit codes of commands that finish but not completely (the README lists them):
"""

EXIT_FAILURES = 4  # the run finished, but some items failed; they are listed in a failures file
EXIT_NOT_SWAPPED = 5  # a load finished but was not served: the alias still serves what it served


class LsrOsError(Exception):
    """Base class: a failure with a message meant for the user."""

    exit_code = 1


class ConfigError(LsrOsError):
    """Invalid options or settings."""

    exit_code = 2


class DataError(LsrOsError):
    """Input data that cannot be used (names the file and the line or id)."""


class ModelError(LsrOsError):
    """A model or checkpoint that cannot be loaded or used."""


class ClusterError(LsrOsError):
    """OpenSearch answered with an error, or a request could not be completed."""


class CollectionMissing(ClusterError):
    """The alias or index asked for does not exist (the message names those that do)."""


class ClusterUnreachable(ClusterError):
    """No OpenSearch node answered at the configured URLs."""

    exit_code = 3


class NodeError(LsrOsError):
    """The local OpenSearch node could not be provisioned, started or stopped."""


class PluginUnavailable(NodeError):
    """The lsr-os OpenSearch plugin cannot be built or installed here (a node can start without it)."""
