"""The lsr-os OpenSearch plugin's Maven project, shipped inside the Python package as
`lsr_os.opensearch_plugin` so that `lsr-os node start` can build it from an installed lsr-os."""
