"""Tools for testing the conductor and its plugins: fake backends, an in-process transport,
an Ollama emulator and conformance suites. Also a pytest plugin (``pytest11`` entry point)."""
