"""Index settings and mappings (JSON), shipped inside the package as lsr_os.mappings."""
