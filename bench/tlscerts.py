"""TLS certificates for tests and benchmarks, made with the openssl command line: a CA, a server certificate for
127.0.0.1 / localhost, and client certificates (one signed by the CA, one by another CA)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certs:
    dir: Path

    def path(self, name: str) -> str:
        return str(self.dir / name)

    @property
    def ca(self) -> str:
        return self.path("ca.crt")

    @property
    def server_cert(self) -> str:
        return self.path("server.crt")

    @property
    def server_key(self) -> str:
        return self.path("server.key")

    @property
    def client_cert(self) -> str:
        return self.path("client.crt")

    @property
    def client_key(self) -> str:
        return self.path("client.key")

    @property
    def stranger_cert(self) -> str:
        """A client certificate signed by a CA nobody trusts."""
        return self.path("stranger.crt")

    @property
    def stranger_key(self) -> str:
        return self.path("stranger.key")


def _run(*argv: str, cwd: Path) -> None:
    subprocess.run(["openssl", *argv], cwd=cwd, check=True, capture_output=True)


def _ca(name: str, cwd: Path) -> None:
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=cwd)  # fmt: skip


def _signed(name: str, ca: str, cwd: Path, san: str | None = None) -> None:
    _run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
         "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=cwd)  # fmt: skip
    ext = cwd / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
         "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", ext.name,
         cwd=cwd)  # fmt: skip


def make_certs(directory: Path) -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    _ca("ca", directory)
    _ca("otherca", directory)
    _signed("server", "ca", directory, "IP:127.0.0.1,DNS:localhost")
    _signed("client", "ca", directory)
    _signed("stranger", "otherca", directory)
    return Certs(directory)
