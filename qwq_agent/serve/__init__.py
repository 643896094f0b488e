"""Launching and health-checking an SGLang server for QwQ-32B."""

from qwq_agent.serve.launcher import (
    INSTALL_HINT,
    PortTaken,
    ReadyInfo,
    ServeConfig,
    ServerError,
    ServerExited,
    ServerProcess,
    ServerStartTimeout,
    build_command,
    check_prerequisites,
    probe,
)

__all__ = [
    "INSTALL_HINT",
    "PortTaken",
    "ReadyInfo",
    "ServeConfig",
    "ServerError",
    "ServerExited",
    "ServerProcess",
    "ServerStartTimeout",
    "build_command",
    "check_prerequisites",
    "probe",
]
