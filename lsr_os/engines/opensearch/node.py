"""A local OpenSearch node: the integration-test distribution from Maven Central, plus mapper-extras.

OpenSearch's build publishes `org.opensearch.distribution.integ-test-zip:opensearch:<v>:zip`. It
lacks the `mapper-extras` module that provides `rank_features`; when an archive lacks it, the
module is laid out from `org.opensearch.plugin:mapper-extras-client` with its descriptor. The
distribution has no security plugin (docker-compose.secure.yml runs a secured OpenSearch).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from lsr_os.engines.base import node as base

log = logging.getLogger(__name__)

# The one place that names the default OpenSearch version (docker-compose's .env must agree;
# a test checks it). 3.8.0 is the newest 3.x whose integration archive Maven Central serves.
DEFAULT_VERSION = "3.8.0"

MAPPER_EXTRAS = ("org.opensearch.plugin", "mapper-extras-client", "jar")


class NodeLayout(base.NodeLayout):
    engine = "opensearch"
    product = "OpenSearch"
    default_version = DEFAULT_VERSION
    default_port = 9200
    distribution = ("org.opensearch.distribution.integ-test-zip", "opensearch", "zip")
    executable = "opensearch"
    config_file = "opensearch.yml"
    java_home_env = "OPENSEARCH_JAVA_HOME"
    path_conf_env = "OPENSEARCH_PATH_CONF"
    java_opts_env = "OPENSEARCH_JAVA_OPTS"
    server_marker = b"org.opensearch.bootstrap.OpenSearch"  # bin/opensearch execs the server JVM
    initial_nodes_setting = "cluster.initial_cluster_manager_nodes"
    plugin_tool = "opensearch-plugin"
    without_security = ("the OpenSearch test distribution has no security plugin; docker-compose.secure.yml "
                        "runs a secured OpenSearch")

    def java_needed(self, version: str) -> int:
        return 21 if int(version.split(".")[0]) >= 3 else 11

    def is_complete(self, dist: Path) -> bool:
        return super().is_complete(dist) and (dist / "modules" / "mapper-extras").is_dir()

    def complete(self, dist: Path, version: str, fetch: base.Fetch) -> None:
        module = dist / "modules" / "mapper-extras"
        if not module.is_dir():
            add_mapper_extras(module, version, fetch)

    def version_from(self, answer: base.Answer) -> str | None:
        version = answer.body.get("version") if isinstance(answer.body, dict) else None
        return version.get("number") if isinstance(version, dict) else None


def add_mapper_extras(module_dir: Path, version: str, fetch: base.Fetch) -> None:
    """Lay out the mapper-extras jar from Maven Central as a module with its descriptor."""
    jar = fetch(*MAPPER_EXTRAS, version)
    module_dir.mkdir(parents=True)
    shutil.copy2(jar, module_dir / jar.name)
    java_version = "21" if int(version.split(".")[0]) >= 3 else "11"
    (module_dir / "plugin-descriptor.properties").write_text(
        "description=Adds advanced field mappers\n"
        f"version={version}\nname=mapper-extras\n"
        "classname=org.opensearch.index.mapper.MapperExtrasModulePlugin\n"
        f"java.version={java_version}\nopensearch.version={version}\n"
        "custom.foldername=\nextended.plugins=\nhas.native.controller=false\n"
    )
    log.info("added the mapper-extras module from %s", jar.name)
