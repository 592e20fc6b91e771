"""conductor-llamacpp: the embedded default backend (llama.cpp's server through xllamacpp).

Deliberately import-light: the server's child process runs ``python -m
conductor_llamacpp._child`` and must not pay for httpx or the kernel. Import the backend from
:mod:`conductor_llamacpp.backend` and the config from :mod:`conductor_llamacpp.plugin`.
"""

__all__: list[str] = []
