"""A `tcp://` Docker endpoint with mutual TLS for tests: this machine's engine behind a TLS relay.

`TLSDockerEndpoint` makes a CA, a server certificate for 127.0.0.1 and a client certificate with the
`openssl` CLI (in a private folder), then serves TLS on a free 127.0.0.1 port, requiring a client
certificate signed by that CA, and relays each connection to the local Docker socket, as
`dockerd --tlsverify` would serve it. `tls` is what `DockerHost(tls=...)` takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path

from qwq_agent.sandbox.transport import TLSFiles

DOCKER_SOCKET = "/var/run/docker.sock"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(folder: Path) -> TLSFiles:
    """CA, server (CN/SAN 127.0.0.1) and client certificates in Docker's file layout."""
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=qwq-test-ca",
        cwd=folder,
    )
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            f"{name}-key.pem",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN=qwq-test-{name}",
            cwd=folder,
        )
        (folder / f"{name}.ext").write_text(ext + "\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            cwd=folder,
        )
    return TLSFiles(ca_cert=folder / "ca.pem", client_cert=folder / "client.pem", client_key=folder / "client-key.pem")  # fmt: skip


class TLSDockerEndpoint:
    """`async with TLSDockerEndpoint() as ep: DockerHost(url=ep.url, tls=ep.tls)`."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="qwq-tls-"))
        self.tls = make_certs(self.dir)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(DOCKER_SOCKET)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._relays.discard(task)

    async def start(self) -> TLSDockerEndpoint:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.tls.ca_cert))
        context.verify_mode = ssl.CERT_REQUIRED  # no client certificate from our CA, no Docker
        context.load_cert_chain(str(self.dir / "server.pem"), str(self.dir / "server-key.pem"))
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def cut(self) -> None:
        """The host goes away: stop listening and drop every relayed connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._relays):
            task.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)

    async def __aenter__(self) -> TLSDockerEndpoint:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.cut()
        shutil.rmtree(self.dir, ignore_errors=True)
