"""A local Elasticsearch node: the integration-test distribution from Maven Central.

Elastic publishes `org.elasticsearch.distribution.integ-test-zip:elasticsearch:<v>:zip` for some
releases only, and its maven-metadata.xml lists no 9.x: ask for an exact version. The distribution
has x-pack security (TLS, the file realm and its `elasticsearch-certutil` / `elasticsearch-users`
tools) but no `rest-root` module: `GET /` answers 405, so the version is read from
`/_nodes/_local` and an answer is known as Elasticsearch's by its `X-Elastic-Product` header.
`bin/elasticsearch` runs a launcher (its class changed between 9.2 and 9.5) that starts the server
JVM as its child and exits with it: lsr-os tracks the server, by the pid in its `-p` pid file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lsr_os.engines.base import node as base

# The one place that names the default Elasticsearch version (.env's ELASTICSEARCH_VERSION must
# agree; a test checks it). 9.5.3 is the newest 9.x whose integration archive Maven Central serves
# (checked 2026-12-04: 9.2.0, 9.2.4, 9.2.8, 9.3.2, 9.5.2 and 9.5.3 are there; 9.3.0, 9.3.4, 9.4.0 are not).
DEFAULT_VERSION = "9.5.3"


class NodeLayout(base.NodeLayout):
    engine = "elasticsearch"
    product = "Elasticsearch"
    default_version = DEFAULT_VERSION
    default_port = 9400  # OpenSearch keeps 9200: both run side by side
    distribution = ("org.elasticsearch.distribution.integ-test-zip", "elasticsearch", "zip")
    executable = "elasticsearch"
    config_file = "elasticsearch.yml"
    java_home_env = "ES_JAVA_HOME"
    path_conf_env = "ES_PATH_CONF"
    java_opts_env = "ES_JAVA_OPTS"
    server_marker = b"org.elasticsearch.bootstrap.Elasticsearch"
    initial_nodes_setting = "cluster.initial_master_nodes"
    supports_security = True
    plugin_tool = "elasticsearch-plugin"
    # Maven Central serves these archives without .sha1 or .pom: the pinned one's digest, measured.
    checksums = {DEFAULT_VERSION: "bec49f3b8d00e75c8d1cec85c35298635ec9fbd3ae80ef5aeb6bc05abdb3db2d"}

    def java_needed(self, version: str) -> int:
        return 21 if int(version.split(".")[0]) >= 9 else 17

    def settings(self, secure: bool) -> dict[str, Any]:
        if not secure:
            return {"xpack.security.enabled": False}
        tls = {"key": base.NODE_KEY, "certificate": base.NODE_CERT, "certificate_authorities": [base.CA_CERT]}
        return {
            "xpack.security.enabled": True,
            "xpack.security.http.ssl.enabled": True,
            **{f"xpack.security.http.ssl.{k}": v for k, v in tls.items()},
            # Nodes of a cluster authenticate each other with the same certificate (issued for 127.0.0.1).
            "xpack.security.transport.ssl.enabled": True,
            "xpack.security.transport.ssl.verification_mode": "full",
            **{f"xpack.security.transport.ssl.{k}": v for k, v in tls.items()},
        }

    def version_path(self) -> str:
        return "/_nodes/_local"

    def version_from(self, answer: base.Answer) -> str | None:
        nodes = answer.body.get("nodes") if self.is_engine(answer) and isinstance(answer.body, dict) else None
        if not isinstance(nodes, dict) or not nodes:
            return None
        return next(iter(nodes.values())).get("version")

    def is_engine(self, answer: base.Answer) -> bool:
        return answer.headers.get("x-elastic-product") == "Elasticsearch"

    def certificate_authority_command(self, out_zip: Path) -> list[str]:
        return ["elasticsearch-certutil", "ca", "--silent", "--pem", "--out", str(out_zip)]

    def node_certificate_command(self, ca_cert: Path, ca_key: Path, out_zip: Path) -> list[str]:
        return ["elasticsearch-certutil", "cert", "--silent", "--pem", "--ca-cert", str(ca_cert), "--ca-key",
                str(ca_key), "--name", "node", "--dns", "localhost", "--ip", "127.0.0.1", "--out", str(out_zip)]

    def add_user_command(self, name: str, role: str) -> list[str]:
        return ["elasticsearch-users", "useradd", name, "-r", role]

    def user_files(self) -> tuple[str, ...]:
        return ("users", "users_roles")
