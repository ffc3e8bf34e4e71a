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
    """The cluster answered with an error, or a request could not be completed."""


class CollectionMissing(ClusterError):
    """The alias or index asked for does not exist (the message names those that do)."""


class ClusterUnreachable(ClusterError):
    """No node answered at the configured URLs."""

    exit_code = 3


class EngineError(ClusterError):
    """A cluster call that failed, in the same shape for every engine (lsr_os.engines translates
    each client's own exceptions): `status` is the HTTP status, or None when no answer came at
    all; `info` is the answer's body (the engine's error object), when there was one."""

    def __init__(self, message: str, status: int | None = None, info=None):
        super().__init__(message)
        self.status, self.info = status, info

    @property
    def error_type(self) -> str | None:
        """The engine's name for the error (`index_not_found_exception`), when it gave one."""
        err = self.info.get("error") if isinstance(self.info, dict) else None
        return err.get("type") if isinstance(err, dict) else None


class NotFound(EngineError):
    """HTTP 404: no such index, alias, repository or snapshot."""


class BadRequest(EngineError):
    """HTTP 400: the cluster refused the request itself (a mapping, a query, a setting)."""


class AccessDenied(EngineError):
    """HTTP 401 or 403: credentials refused, or the user may not do this."""


class NoAnswer(EngineError, ClusterUnreachable):
    """No HTTP answer: the connection was refused, reset or timed out (worth retrying)."""


class TLSFailure(EngineError):
    """The TLS handshake failed (an unknown CA, or plain HTTP spoken to an HTTPS port)."""


class NodeError(LsrOsError):
    """A local node could not be provisioned, started or stopped."""


class PluginUnavailable(NodeError):
    """The lsr-os plugin cannot be built or installed here (a node can start without it)."""
