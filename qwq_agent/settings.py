"""Every environment variable qwq-agent reads, in one pydantic-settings object.

`Settings()` reads the environment when it is built (`get_settings()` builds a fresh one, so a test or
a script that changes `os.environ` sees its change); nothing else in the package reads `os.environ`,
except the in-container supervisor, which runs on the standard library only. `qwq-agent --help` lists
these variables with their defaults (`env_help`).

Several names for one setting (`OPENAI_BASE_URL` and our `QWQ_OPENAI_BASE_URL`) are tried in order;
the first that is set wins. An empty variable counts as unset. The proxy variables are the exception to
pydantic-settings' case-insensitive reading: `http_proxy` is read before `HTTP_PROXY`, as urllib, requests,
httpx and curl read them (case-insensitively, whichever came later in the environment won), and
`Settings.variable` says which one set the value, so that a message names the variable really set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, PrivateAttr, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_MODEL_URL = "http://127.0.0.1:30000"
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
# The most seconds a timeout variable may hold: `inf` or 1e300 passed `gt=0` and then overflowed the
# socket and clock arithmetic they feed (an "unexpected error", not a bad variable); nan never expires.
LONGEST_WAIT_S = 86400.0


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


# Fields read lower case first, then upper case, then any other spelling (`Http_Proxy`), as urllib does.
_LOWER_FIRST = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def _lower_first(environ: Mapping[str, str], field: str) -> tuple[str, str] | None:
    """The variable (and its value) that sets `field`: `field` itself, else its upper-case name, else
    another spelling of it (the first in sorted order); empty ones count as unset."""
    others = sorted(k for k in environ if k.lower() == field and k not in (field, field.upper()))
    for name in (field, field.upper(), *others):
        if environ.get(name):
            return name, environ[name]
    return None


class _LowerFirstSource(PydanticBaseSettingsSource):
    """The `_LOWER_FIRST` fields, each from the variable `_lower_first` picks; before the environment
    source, which would take whichever spelling came last in `os.environ`."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        found = _lower_first(os.environ, field_name)
        return (found[1] if found else None), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {f: found[1] for f in _LOWER_FIRST if (found := _lower_first(os.environ, f))}


class SettingsError(ValueError):
    """An environment variable holds a value that cannot be used, or one that is needed is missing; the
    message names it, and `fix` (when not empty) says what to do instead of the usual "fix or unset it"."""

    def __init__(self, message: str, *, fix: str = "") -> None:
        super().__init__(message)
        self.fix = fix


class Settings(BaseSettings):
    """qwq-agent's configuration from the environment; each field documents its variable(s)."""

    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", populate_by_name=True)

    # The model server.
    model_url: str = Field(
        DEFAULT_MODEL_URL,
        validation_alias=_env("QWQ_MODEL_URL"),
        description="model server of `run` (http:// or https://)",
    )
    api: Literal["native", "openai"] = Field(
        "native", validation_alias=_env("QWQ_API"), description="API `run` speaks: native SGLang or openai"
    )
    model: str = Field(
        "Qwen/QwQ-32B",
        validation_alias=_env("QWQ_MODEL"),
        description="model name for `run --api openai` when no OpenAI model variable is set",
    )
    openai_base_url: str | None = Field(
        None,
        validation_alias=_env("QWQ_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
        description="OpenAI-compatible API root for `--api openai` / `OpenAIChatClient` (`run`'s default: QWQ_MODEL_URL)",
    )
    openai_model: str | None = Field(
        None,
        validation_alias=_env("QWQ_OPENAI_MODEL", "OPENAI_MODEL"),
        description="model name for `--api openai` / `OpenAIChatClient` (default: qwq-32b)",
    )
    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias=_env("QWQ_OPENAI_API_KEY", "OPENAI_API_KEY", "DASHSCOPE_API_KEY"),
        description="bearer key of the OpenAI-compatible API (never logged or traced)",
    )
    model_connect_timeout_s: float = Field(
        3.0,
        gt=0,
        le=LONGEST_WAIT_S,
        allow_inf_nan=False,
        validation_alias=_env("QWQ_MODEL_CONNECT_TIMEOUT"),
        description="seconds `run` waits for the model server's first answer at start-up",
    )
    model_read_timeout_s: float = Field(
        600.0,
        gt=0,
        le=LONGEST_WAIT_S,
        allow_inf_nan=False,
        validation_alias=_env("QWQ_MODEL_READ_TIMEOUT"),
        description="seconds an OpenAI-compatible stream may stay silent",
    )
    # How our HTTP clients reach the servers named above, and the MCP servers and OTLP collector
    # (`qwq_agent.http_env`; fetch_url and web_search use no proxy: they connect to the address they checked).
    http_proxy: str | None = Field(
        None, validation_alias=_env("http_proxy", "HTTP_PROXY"), description="proxy for http:// servers"
    )
    https_proxy: str | None = Field(
        None, validation_alias=_env("https_proxy", "HTTPS_PROXY"), description="proxy for https:// servers"
    )
    all_proxy: str | None = Field(
        None,
        validation_alias=_env("all_proxy", "ALL_PROXY"),
        description="proxy for both when the one of the scheme is unset (http://, https:// or socks5://)",
    )
    no_proxy: str | None = Field(
        None,
        validation_alias=_env("no_proxy", "NO_PROXY"),
        description="hosts reached directly, comma-separated: domains, .subdomains, addresses, networks (10.0.0.0/8), "
        "host:port, * for all; loopback always is",
    )
    ssl_cert_file: str | None = Field(
        None,
        validation_alias=_env("SSL_CERT_FILE"),
        description="CA bundle for https:// (default: certifi's)",
    )
    ssl_cert_dir: str | None = Field(
        None, validation_alias=_env("SSL_CERT_DIR"), description="folder of CA certificates for https://"
    )
    # What requests read by itself before the OTLP exporter's session was built with `trust_env=False`:
    # kept, so that a collector's CA set this way still verifies.
    requests_ca_bundle: str | None = Field(
        None,
        validation_alias=_env("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"),
        description="CA bundle for the OTLP collector when SSL_CERT_FILE and SSL_CERT_DIR are unset",
    )
    # Docker and the sandbox image.
    docker_host: str = Field(
        DEFAULT_DOCKER_HOST,
        validation_alias=_env("DOCKER_HOST"),
        description="Docker engine of the sandboxes: unix:///path, ssh://user@host[:port] or tcp://host:port (TLS)",
    )
    docker_cert_path: str | None = Field(
        None,
        validation_alias=_env("DOCKER_CERT_PATH"),
        description="folder of ca.pem, cert.pem and key.pem for a tcp:// DOCKER_HOST (its TLS)",
    )
    docker_ssh_config: str | None = Field(
        None,
        validation_alias=_env("QWQ_DOCKER_SSH_CONFIG"),
        description="ssh_config file for an ssh:// DOCKER_HOST (default: the user's ~/.ssh/config)",
    )
    docker_ping_timeout_s: float = Field(
        10.0,
        gt=0,
        le=LONGEST_WAIT_S,
        allow_inf_nan=False,
        validation_alias=_env("QWQ_DOCKER_PING_TIMEOUT"),
        description="seconds `run` waits for Docker to answer a ping",
    )
    sandbox_image: str | None = Field(
        None,
        validation_alias=_env("QWQ_SANDBOX_IMAGE"),
        description="sandbox image to use instead of the project's (built when missing)",
    )
    # Checked where the image is built (`sandbox.image.mode`), so that a bad value fails that build and
    # not every command that reads a setting.
    sandbox_build: str = Field(
        "auto",
        validation_alias=_env("QWQ_SANDBOX_BUILD"),
        description="how the sandbox image is built: auto, debian or dockerfile",
    )
    sandbox_build_wait_s: float = Field(
        1800.0,
        gt=0,
        le=LONGEST_WAIT_S,
        allow_inf_nan=False,
        validation_alias=_env("QWQ_SANDBOX_BUILD_WAIT"),
        description="seconds a sandbox image build waits for another process's build to finish",
    )
    # The document index.
    index_wait_s: float = Field(
        60.0,
        gt=0,
        le=LONGEST_WAIT_S,
        allow_inf_nan=False,
        validation_alias=_env("QWQ_INDEX_WAIT"),
        description="seconds `qwq-agent index` waits for another process's update of the same index",
    )
    sandbox_deb_cache: Path | None = Field(
        None,
        validation_alias=_env("QWQ_SANDBOX_DEB_CACHE"),
        description="folder of downloaded .debs (default: $XDG_CACHE_HOME/qwq-agent/debs)",
    )
    # The default (~/.cache) is resolved when the cache is used (`cache_home`), not here: a user without
    # a home (HOME unset, no passwd entry) could otherwise run no command at all, `--version` included.
    xdg_cache_home: Path | None = Field(
        None, validation_alias=_env("XDG_CACHE_HOME"), description="cache root (default: ~/.cache)"
    )
    # Telemetry (the OpenTelemetry SDK's own variables).
    otel_endpoint: str | None = Field(
        None,
        validation_alias=_env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        description="OTLP/HTTP collector; set, `run` exports spans",
    )
    otel_service_name: str | None = Field(
        None,
        validation_alias=_env("OTEL_SERVICE_NAME"),
        description="service.name of the spans (default: qwq-agent)",
    )
    otel_capture_content: bool = Field(
        False,
        validation_alias=_env("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"),
        description="record prompts, outputs and tool arguments in spans",
    )
    # Web search providers (the `web_search` tool).
    search_provider: str | None = Field(
        None, validation_alias=_env("QWQ_SEARCH_PROVIDER"), description="searxng, brave or tavily"
    )
    searxng_url: str | None = Field(
        None, validation_alias=_env("QWQ_SEARXNG_URL"), description="SearXNG instance"
    )
    brave_api_key: SecretStr | None = Field(
        None, validation_alias=_env("BRAVE_API_KEY"), description="Brave Search API key"
    )
    brave_base_url: str | None = Field(
        None, validation_alias=_env("QWQ_BRAVE_BASE_URL"), description="Brave API endpoint override"
    )
    tavily_api_key: SecretStr | None = Field(
        None, validation_alias=_env("TAVILY_API_KEY"), description="Tavily API key"
    )
    tavily_base_url: str | None = Field(
        None, validation_alias=_env("QWQ_TAVILY_BASE_URL"), description="Tavily API endpoint override"
    )
    debug: bool = Field(False, validation_alias=_env("QWQ_DEBUG"), description="print tracebacks on errors")

    # field -> the variable that set it, for the fields read from several names (`variable`).
    _variables: dict[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            _LowerFirstSource(settings_cls),
            env_settings,
            dotenv_settings,
            file_secret_settings,
        )

    def model_post_init(self, context: Any, /) -> None:
        # Which variable set each value, found now: the environment the values were read from.
        for field in _LOWER_FIRST:
            found = _lower_first(os.environ, field)
            if found is not None and found[1] == getattr(self, field):
                self._variables[field] = found[0]
        info = type(self).model_fields["requests_ca_bundle"]
        for name in _names(info):
            if os.environ.get(name) and os.environ[name] == self.requests_ca_bundle:
                self._variables["requests_ca_bundle"] = name
                break

    def variable(self, field: str) -> str:
        """The environment variable that set `field` (`http_proxy` when only the lower-case one is
        set); when the value was given in code or is unset, the name a user would set (`HTTP_PROXY`)."""
        if field in self._variables:
            return self._variables[field]
        return field.upper() if field in _LOWER_FIRST else _names(type(self).model_fields[field])[0]

    @field_validator("sandbox_build", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @property
    def cache_home(self) -> Path:
        """The cache root: `XDG_CACHE_HOME`, else `~/.cache`.

        Raises `SettingsError` (its `fix` says what to set) when neither is known: XDG_CACHE_HOME unset,
        and no home directory (HOME unset and the user id without a passwd entry).
        """
        if self.xdg_cache_home is not None:
            return self.xdg_cache_home
        try:
            return Path.home() / ".cache"
        except RuntimeError:  # what Path.home() raises when neither HOME nor the passwd entry says
            raise SettingsError(
                "no cache folder: XDG_CACHE_HOME is unset and the home directory is unknown (HOME is "
                f"unset and user id {os.getuid()} has no passwd entry)",
                fix="set XDG_CACHE_HOME (or HOME) to a folder this user can write",
            ) from None

    def search_env(self) -> dict[str, str]:
        """The web-search variables as `provider_from_env` reads them (set ones only)."""
        pairs = {
            "QWQ_SEARCH_PROVIDER": self.search_provider,
            "QWQ_SEARXNG_URL": self.searxng_url,
            "BRAVE_API_KEY": self.brave_api_key.get_secret_value() if self.brave_api_key else None,
            "QWQ_BRAVE_BASE_URL": self.brave_base_url,
            "TAVILY_API_KEY": self.tavily_api_key.get_secret_value() if self.tavily_api_key else None,
            "QWQ_TAVILY_BASE_URL": self.tavily_base_url,
        }
        return {k: v for k, v in pairs.items() if v}


def get_settings() -> Settings:
    """The settings as the environment says now; a bad value raises `SettingsError` naming its variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            info = Settings.model_fields.get(field)
            names = _names(info) if info is not None else [field]
            problems.append(f"{' / '.join(names)}: {err['msg']} (got {err.get('input')!r})")
        raise SettingsError("bad environment variable: " + "; ".join(problems)) from None


def _names(info: Any) -> list[str]:
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(c) for c in alias.choices]
    return [str(alias)]


def env_help() -> str:
    """The environment variables and their defaults, for `--help`."""
    lines = ["environment variables (first name set wins; defaults in brackets):"]
    for name, info in Settings.model_fields.items():
        default = info.default
        if name == "xdg_cache_home":
            default = "~/.cache"
        shown = "" if default is None else f" [{default}]"
        lines.append(f"  {' / '.join(_names(info))}{shown}")
        lines.append(f"      {info.description}")
    return "\n".join(lines)
