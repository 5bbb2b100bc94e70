"""A run: declared stages, the runner that keys and caches them, launches over many processes, preflight, assembly and the summary."""
