"""What a local node of one engine needs that differs between engines.

`lsr_os.node` does the engine-free work (Maven Central, unpacking, Java, the unprivileged uid,
start/stop/status/logs, state folders) and asks a `NodeLayout` for every name, setting and check
that differs. Each engine's `node` module holds the one `NodeLayout` subclass of that engine and
the one pin of its default version. Standard library only: `lsr_os.node` loads it on every CLI call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

# (group, artifact, packaging, version) -> the artifact's path in the download cache.
Fetch = Callable[[str, str, str, str], Path]

# Where a secured node's config folder holds its PEM files (paths relative to that folder, as
# the settings name them).
CA_CERT, NODE_CERT, NODE_KEY = "certs/ca.crt", "certs/node.crt", "certs/node.key"


@dataclass(frozen=True)
class Answer:
    """One HTTP answer from a node: status, headers (names lower-cased) and JSON body (None if not JSON)."""

    status: int
    headers: Mapping[str, str]
    body: Any


class NodeLayout:
    """A local node of one engine: the artifact, the files and names in it, its settings, its checks.

    Subclasses set every attribute below and override the methods whose default does not hold.
    """

    engine: str  # the name lsr-os uses (--engine, state files)
    product: str  # the engine's own name, for messages
    default_version: str
    default_port: int  # HTTP port of the first node when the user names none
    distribution: tuple[str, str, str]  # Maven Central coordinates (group, artifact, packaging), less the version
    executable: str  # bin/<executable> runs a node
    config_file: str  # the node's settings file in its config folder
    java_home_env: str  # the JDK the start scripts use
    path_conf_env: str  # the config folder the start scripts use
    java_opts_env: str  # extra JVM options; cleared, so the caller's environment cannot change the heap
    # In /proc/<pid>/cmdline of the server JVM (the pid it writes to its `-p` pid file): how a
    # live node is told from a reused pid.
    server_marker: bytes
    initial_nodes_setting: str  # names the nodes that may elect the first cluster manager
    supports_security: bool = False  # whether the distribution has TLS and users (see the security methods)
    without_security: str = ""  # where it has none: why, and what to use instead (the error's words)
    plugin_tool: str  # bin/<plugin_tool> installs a plugin zip (`install --batch file://...`)
    # sha256 of the distribution per version, where Maven Central publishes no checksum file.
    checksums: Mapping[str, str] = {}

    def java_needed(self, version: str) -> int:
        """The oldest Java major that `version` runs on."""
        raise NotImplementedError

    def is_complete(self, dist: Path) -> bool:
        """Whether an unpacked distribution has everything lsr-os needs (else it is unpacked again)."""
        return (dist / "bin" / self.executable).exists()

    def complete(self, dist: Path, version: str, fetch: Fetch) -> None:
        """Add what the archive lacks (modules lsr-os needs), before the distribution is used."""

    def settings(self, secure: bool) -> dict[str, Any]:
        """The engine's own settings, on top of the ones every engine shares (names, ports, paths);
        `secure` (only where `supports_security`) turns on TLS and users with the files named above."""
        return {}

    def version_path(self) -> str:
        """The path whose answer `version_from` reads."""
        return "/"

    def version_from(self, answer: Answer) -> str | None:
        """The node's version from its answer to `version_path` (None when it is not this engine's)."""
        raise NotImplementedError

    def is_engine(self, answer: Answer) -> bool:
        """Whether an answer comes from this engine (the readiness check also asks this)."""
        return True

    # ---- security: only for an engine whose `supports_security` is true

    def certificate_authority_command(self, out_zip: Path) -> list[str]:
        """bin/ tool and arguments that write a new CA (PEM certificate and key) into `out_zip`."""
        raise NotImplementedError

    def node_certificate_command(self, ca_cert: Path, ca_key: Path, out_zip: Path) -> list[str]:
        """bin/ tool and arguments that write a certificate for localhost/127.0.0.1 signed by the CA."""
        raise NotImplementedError

    def add_user_command(self, name: str, role: str) -> list[str]:
        """bin/ tool and arguments that add a user of the file realm; the password comes on stdin."""
        raise NotImplementedError

    def user_files(self) -> tuple[str, ...]:
        """The files in the config folder where `add_user_command` writes its users."""
        raise NotImplementedError
