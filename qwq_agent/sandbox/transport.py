"""How the engine client reaches a Docker engine: a unix socket, an ssh tunnel or TLS over TCP.

A `Connector` opens one byte stream to the engine's API (the engine client speaks HTTP over it, hijacked
attach streams included) and makes the docker-py client the janitor uses. The URL forms are Docker's
own (`DOCKER_HOST`): `unix:///var/run/docker.sock`, `ssh://user@host[:port]`, `tcp://host:2376` (TLS
only: a plain-TCP engine API is root on that host for anyone who can reach the port).

ssh goes through the OpenSSH client (`ssh -L local.sock:/var/run/docker.sock`, see `ssh_tunnel`): one
authenticated connection per host carries every request and every sandbox's attach stream, it honours
the user's `~/.ssh/config` (keys, jump hosts, known hosts), and it needs neither paramiko nor the
`docker` CLI on either side. docker-py's own ssh support would need one of those two.

The `Connector` seam and the local unix socket are in `connector`, which the ssh tunnel builds on.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from qwq_agent.sandbox.connector import STREAM_LIMIT, Connector, UnixConnector
from qwq_agent.sandbox.errors import SandboxError
from qwq_agent.sandbox.ssh_tunnel import shared_tunnel
from qwq_agent.urls import has_password, redact_url


class TLSFiles(BaseModel):
    """The client side of Docker's TLS (`dockerd --tlsverify`): the CA that signed the daemon's
    certificate, and this client's certificate and key."""

    ca_cert: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def from_dir(cls, folder: str | Path) -> TLSFiles:
        """`ca.pem`, `cert.pem`, `key.pem` in `folder` (Docker's `DOCKER_CERT_PATH` layout)."""
        d = Path(folder).expanduser()
        return cls(ca_cert=d / "ca.pem", client_cert=d / "cert.pem", client_key=d / "key.pem")


class TLSConnector:
    """`tcp://host:port` with mutual TLS: the daemon's certificate is verified, ours is presented."""

    def __init__(self, url: str, tls: TLSFiles) -> None:
        parts = urlsplit(url)
        if not parts.hostname:
            raise SandboxError(f"{url!r} names no host")
        self.url = url
        self.host, self.port = parts.hostname, parts.port or 2376
        self.tls = tls
        missing = [str(p) for p in (tls.ca_cert, tls.client_cert, tls.client_key) if not p.is_file()]
        if missing:
            raise SandboxError(f"TLS files for {url} are missing: {', '.join(missing)}")
        self._context = ssl.create_default_context(cafile=str(tls.ca_cert))
        self._context.load_cert_chain(str(tls.client_cert), str(tls.client_key))

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            self.host, self.port, ssl=self._context, server_hostname=self.host, limit=STREAM_LIMIT
        )

    def docker_client(self, timeout: float) -> Any:
        import docker
        from docker.tls import TLSConfig

        tls = TLSConfig(
            client_cert=(str(self.tls.client_cert), str(self.tls.client_key)),
            ca_cert=str(self.tls.ca_cert),
            verify=True,
        )
        # A fixed API version: no probe in the constructor, so that the next line applies to every call.
        client = docker.DockerClient(
            base_url=f"https://{self.host}:{self.port}",
            tls=tls,
            timeout=max(1, round(timeout)),
            version="1.41",
        )
        # requests would otherwise replace our CA with REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE when set, and
        # the daemon's certificate would fail (or, worse, pass) against the system's CAs.
        client.api.trust_env = False
        return client


class DockerHost(BaseModel):
    """One Docker engine sandboxes may run on.

    `capacity` is how many sandboxes it takes at once (default: its memory over the sandbox memory
    limit, read from the engine). `ssh_config` is an ssh_config(5) file for `ssh://` hosts (default:
    the user's); `tls` holds the certificates of a `tcp://` host (default: `DOCKER_CERT_PATH`).
    A URL with a password (`ssh://user:pw@host`) raises `SandboxError`, as Docker's own client refuses
    one: nothing would send it, and every message naming the host would show it.
    """

    model_config = ConfigDict(hide_input_in_errors=True)  # an error quoting the URL would show its password

    url: str
    capacity: int | None = Field(default=None, ge=1)
    ssh_config: Path | None = Field(default=None)
    tls: TLSFiles | None = Field(default=None)

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str) -> str:
        scheme = url.partition("://")[0]
        if scheme not in ("unix", "ssh", "tcp") or "://" not in url:
            raise ValueError(
                f"not a Docker host URL: {redact_url(url)!r} (use unix:///path, ssh://user@host or tcp://host:port)"
            )
        if has_password(url):
            # Not a ValueError: pydantic would wrap it in a ValidationError, which callers catching
            # SandboxError for a bad host do not expect.
            raise SandboxError(
                f"{redact_url(url, keep_user=True)}: a Docker host URL cannot carry a password (ssh:// logs "
                "in with a key: QWQ_DOCKER_SSH_CONFIG or ~/.ssh/config; tcp:// with TLS certificates)"
            )
        return url


def connector_for(host: DockerHost | str) -> Connector:
    """The connector of `host`; ssh tunnels are shared per (url, config) within the process."""
    host = host if isinstance(host, DockerHost) else DockerHost(url=host)
    scheme = host.url.partition("://")[0]
    if scheme == "unix":
        return UnixConnector(host.url[len("unix://") :])
    if scheme == "ssh":
        return shared_tunnel(host.url, host.ssh_config)
    tls = host.tls
    if tls is None:
        from qwq_agent.settings import get_settings

        cert_path = get_settings().docker_cert_path
        if not cert_path:
            raise SandboxError(
                f"{host.url}: a tcp:// Docker host needs TLS (pass DockerHost(tls=TLSFiles(...)) or set "
                "DOCKER_CERT_PATH); a plain-TCP engine API would be root on that host for anyone"
            )
        tls = TLSFiles.from_dir(cert_path)
    return TLSConnector(host.url, tls)


def default_connector() -> Connector:
    """The engine `DOCKER_HOST` names (and, for ssh, `QWQ_DOCKER_SSH_CONFIG`)."""
    from qwq_agent.settings import get_settings

    settings = get_settings()
    config = settings.docker_ssh_config
    return connector_for(DockerHost(url=settings.docker_host, ssh_config=Path(config) if config else None))


def docker_from_env(timeout: float = 60.0) -> Any:
    """docker-py for the `DOCKER_HOST` engine, like `docker.from_env()` but through these connectors
    (so `ssh://` needs neither paramiko nor the docker CLI, and `tcp://` is TLS-only)."""
    return default_connector().docker_client(timeout)
