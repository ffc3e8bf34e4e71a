"""The lsr-os plugin's Maven project (a Lucene core, an OpenSearch and an Elasticsearch module),
shipped inside the Python package as `lsr_os.plugin_sources` so that `lsr-os node start` can
build it for the node's exact version from an installed lsr-os."""
