"""Where a server's code comes from, validated at the boundary.

These models are the contract between the API (which validates user input with them) and the
runtimes (which receive them back, already valid, inside a deployment plan).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

_PYPI_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,198}[A-Za-z0-9])?$")
_NPM_NAME = re.compile(r"^(?:@[a-z0-9][a-z0-9._~-]{0,100}/)?[a-z0-9][a-z0-9._~-]{0,213}$")
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+!_-]{0,63}$")
# Docker distribution reference grammar, reduced: [registry[:port]/]path[:tag][@digest], lowercase path.
_IMAGE_REF = re.compile(
    # The first component is a registry only when it looks like a host: has a dot or a port, or is localhost.
    r"^(?:(?P<registry>(?:[A-Za-z0-9-]+\.)+[A-Za-z0-9-]+(?::[0-9]{1,5})?|localhost(?::[0-9]{1,5})?"
    r"|[A-Za-z0-9-]+:[0-9]{1,5})/)?"
    r"(?P<path>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)
# Names that would run arbitrary code instead of the package's own server.
INTERPRETERS = re.compile(
    r"^(python[0-9.]*|pypy[0-9.]*|node(js)?|deno|bun|npm|npx|pnpm|yarn|pip[0-9.]*|uvx?|"
    r"(ba|da|z|k|c|tc|fi)?sh|env|busybox|perl|ruby|php|lua|awk|gawk|sudo|su)$"
)
_EXECUTABLE = re.compile(r"^[A-Za-z0-9_./+-][A-Za-z0-9_./+@:=-]{0,255}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
RESERVED_ENV = ("PORT", "MCPHOST_")
# The same rules as JSON Schema patterns, so the API's schema says what validate_env accepts.
ENV_NAME_PATTERN = r"^(?!PORT$)(?!MCPHOST_)[A-Za-z_][A-Za-z0-9_]{0,127}$"
ENV_VALUE_PATTERN = r"^[^\x00]*$"
# validate_env gives the reasons in words; the schema states the same rules.
EnvMap = Annotated[
    dict[str, str],
    Field(
        json_schema_extra={
            "maxProperties": 200,
            "patternProperties": {
                ENV_NAME_PATTERN: {"type": "string", "maxLength": 32768, "pattern": ENV_VALUE_PATTERN}
            },
            "additionalProperties": False,
        }
    ),
]

MAX_ARGS = 64
MAX_ARG_LEN = 4096


def _check_args(args: list[str]) -> list[str]:
    if len(args) > MAX_ARGS:
        raise ValueError(f"at most {MAX_ARGS} arguments")
    for arg in args:
        if "\x00" in arg or len(arg) > MAX_ARG_LEN:
            raise ValueError(f"arguments must be text without NUL bytes, at most {MAX_ARG_LEN} characters")
    return args


def _check_path(value: str) -> str:
    if not value.startswith("/") or len(value) > 200 or any(c in value for c in "?#\\ \t\r\n"):
        raise ValueError("path must start with '/' and contain no query, fragment or whitespace")
    return value


def _type_required(schema: dict[str, Any]) -> None:
    """`type` picks the kind of source: the API requires it (the models default it for internal use)."""
    required = schema.setdefault("required", [])
    if "type" not in required:
        required.insert(0, "type")


class _Source(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_type_required)


class ImageSource(_Source):
    """An OCI image that serves MCP over streamable HTTP on `port` at `path`."""

    type: Literal["image"] = "image"
    image: str = Field(
        description="OCI image reference, e.g. ghcr.io/acme/weather-mcp:1.2",
        json_schema_extra={"maxLength": 512, "pattern": re.sub(r"\(\?P<\w+>", "(?:", _IMAGE_REF.pattern)},
    )
    port: int = Field(default=8080, ge=1, le=65535, description="Container port the server listens on")
    path: str = Field(default="/mcp", description="HTTP path of the MCP endpoint inside the container")

    @field_validator("image")
    @classmethod
    def _valid_ref(cls, value: str) -> str:
        if len(value) > 512 or not _IMAGE_REF.match(value):
            raise ValueError(
                "not a valid OCI image reference; expected [registry/]name[:tag][@sha256:digest] "
                "with a lowercase name, e.g. ghcr.io/acme/weather-mcp:1.2"
            )
        return value

    _path = field_validator("path")(classmethod(lambda cls, v: _check_path(v)))


class PackageSource(_Source):
    """An MCP server published as a PyPI or npm package."""

    type: Literal["package"] = "package"
    registry: Literal["pypi", "npm"] = "pypi"
    package: str
    version: str | None = None
    command: str | None = Field(
        default=None,
        description="Entry point the package declares (a PyPI console script or an npm bin) to run; "
        "defaults to the one named after the package. Interpreters, shells and paths are refused.",
    )
    args: list[str] = Field(default_factory=list)
    transport: Literal["stdio", "http"] = Field(
        default="stdio", description="stdio servers are bridged to streamable HTTP by the platform"
    )
    path: str = "/mcp"

    @field_validator("package")
    @classmethod
    def _valid_package(cls, value: str, info: Any) -> str:
        registry = info.data.get("registry", "pypi")
        pattern = _NPM_NAME if registry == "npm" else _PYPI_NAME
        if not pattern.match(value):
            raise ValueError(f"{value!r} is not a valid {registry} package name")
        return value

    @field_validator("version")
    @classmethod
    def _valid_version(cls, value: str | None) -> str | None:
        if value is not None and not _VERSION.match(value):
            raise ValueError("version must be an exact version such as 1.4.2")
        return value

    @field_validator("command")
    @classmethod
    def _valid_command(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", value):
            raise ValueError(
                "command must name an entry point the package declares (a console script or npm bin), "
                "not a path: letters, digits, '.', '_', '-'"
            )
        if INTERPRETERS.match(value.lower()):
            raise ValueError(
                f"command {value!r} is an interpreter or shell; a package server runs only an entry point "
                "the package itself declares (its console scripts or npm bin entries). Leave command unset "
                "to run the package's own entry point"
            )
        return value

    _args = field_validator("args")(classmethod(lambda cls, v: _check_args(v)))

    @property
    def requirement(self) -> str:
        if self.registry == "npm":
            return f"{self.package}@{self.version}" if self.version else self.package
        return f"{self.package}=={self.version}" if self.version else self.package


class CommandSource(_Source):
    """An executable already present on the worker host. Only administrators may create these."""

    type: Literal["command"] = "command"
    command: str
    args: list[str] = Field(default_factory=list)
    transport: Literal["stdio", "http"] = "stdio"
    path: str = "/mcp"

    @field_validator("command")
    @classmethod
    def _valid_command(cls, value: str) -> str:
        if not _EXECUTABLE.match(value) or value.startswith("-"):
            raise ValueError("command must be an executable name or path, without spaces or shell syntax")
        return value

    _args = field_validator("args")(classmethod(lambda cls, v: _check_args(v)))


# A branch or tag name as `git check-ref-format` accepts it, reduced to a safe subset, or a commit id.
_GIT_REF = re.compile(r"^(?!-)(?!.*\.\.)(?!.*@\{)(?!.*//)[A-Za-z0-9._/+-]{1,200}(?<![./])$")
_GIT_SCHEMES = ("https", "http", "file")
GIT_URL_SHAPE = (
    r"^(?:[hH][tT][tT][pP][sS]?://[^\x00-\x20\x7f@/:\-][^\x00-\x20\x7f@/]*(?:/[^\x00-\x20\x7f]*)?"
    r"|[fF][iI][lL][eE]:///[^\x00-\x20\x7f]*)$"
)


class GitSource(_Source):
    """A git repository the platform clones, builds into an image and runs on the docker runtime."""

    type: Literal["git"] = "git"
    repo_url: str = Field(
        description="https:// URL of the repository (http:// and file:// only where allowed)",
        # What check_git_url_syntax accepts, for the schema; the validator says what is wrong in words.
        json_schema_extra={"maxLength": 2048, "pattern": GIT_URL_SHAPE},
    )
    branch: str | None = Field(default=None, description="Branch or tag to build; the default branch if unset")
    ref: str | None = Field(default=None, description="Exact commit to build (40 hex digits)")
    subdirectory: str | None = Field(default=None, description="Folder of the repository that holds the server")
    port: int | None = Field(
        default=None, ge=1, le=65535, description="Container port; else the Dockerfile's EXPOSE or 8000"
    )
    path: str = "/mcp"

    @field_validator("repo_url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        return check_git_url_syntax(value)

    @field_validator("branch")
    @classmethod
    def _valid_branch(cls, value: str | None) -> str | None:
        if value is not None and not _GIT_REF.match(value):
            raise ValueError("branch must be a branch or tag name (letters, digits, '.', '_', '/', '-')")
        return value

    @field_validator("ref")
    @classmethod
    def _valid_ref(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-f]{40}", value):
            raise ValueError("ref must be a full commit id (40 lowercase hex digits)")
        return value

    @field_validator("subdirectory")
    @classmethod
    def _valid_subdirectory(cls, value: str | None) -> str | None:
        if value is None or value.strip("/") == "":
            return None
        parts = value.strip("/").split("/")
        if value.startswith("/") or any(p in ("", ".", "..") or p.startswith("-") for p in parts):
            raise ValueError("subdirectory must be a relative path inside the repository, without '..'")
        if len(value) > 300 or not re.fullmatch(r"[A-Za-z0-9._/ -]+", value):
            raise ValueError("subdirectory may use letters, digits, '.', '_', '-', ' ' and '/'")
        return "/".join(parts)

    _path = field_validator("path")(classmethod(lambda cls, v: _check_path(v)))


def check_git_url_syntax(value: str) -> str:
    """Reject repository URLs that could make git run commands, read options or use odd transports.

    Which schemes and hosts are allowed on this installation is decided separately, with the
    operator's settings (`core.gitpolicy`).
    """
    if len(value) > 2048:
        raise ValueError("repository URL is longer than 2048 characters")
    if value.startswith("-"):
        raise ValueError("repository URL must not start with '-'")
    scheme, sep, rest = value.partition("://")
    if "::" in value.split("/", 1)[0] or scheme.lower() == "ext":
        raise ValueError("git remote helpers (such as ext::) are not allowed; use an https:// URL")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        raise ValueError("repository URL must not contain spaces or control characters")
    if not sep:
        raise ValueError("repository URL must be a full URL such as https://github.com/acme/weather-mcp.git")
    if scheme.lower() not in _GIT_SCHEMES:
        raise ValueError(f"{scheme}:// repositories are not supported; use https://")
    if scheme.lower() != "file":
        authority = rest.split("/", 1)[0]
        if "@" in authority:
            raise ValueError("put no credentials in the repository URL")
        host = authority.rsplit(":", 1)[0] if not authority.endswith("]") else authority
        if not host or host.startswith(("-", ":")):
            raise ValueError("repository URL has no host")
    elif not rest.startswith("/"):
        raise ValueError("file:// URLs must name an absolute path")
    return value


ServerSource = Annotated[ImageSource | PackageSource | CommandSource | GitSource, Field(discriminator="type")]
AnySource = ImageSource | PackageSource | CommandSource | GitSource
source_adapter: TypeAdapter[AnySource] = TypeAdapter(ServerSource)


def parse_source(data: dict[str, Any]) -> AnySource:
    return source_adapter.validate_python(data)


def validate_env(env: dict[str, str]) -> dict[str, str]:
    if len(env) > 200:
        raise ValueError("at most 200 environment variables")
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not a valid environment variable name")
        if name == "PORT" or name.startswith("MCPHOST_"):
            raise ValueError(f"{name} is set by the platform and cannot be configured")
        if not isinstance(value, str) or "\x00" in value or len(value) > 32768:
            raise ValueError(f"value of {name} must be text without NUL bytes, at most 32 KiB")
    return env


def default_runtime_for(source: AnySource, configured: str) -> str:
    """The runtime a source runs on when the server does not name one."""
    if isinstance(source, ImageSource | GitSource):
        return configured if configured in ("kubernetes", "virtual-machine") else "docker"
    if configured in ("kubernetes", "virtual-machine"):
        # A cluster or a guest runs images; packages and commands run on the worker's host.
        return "process"
    if isinstance(source, CommandSource):
        # An executable of the worker host has no image to run in.
        return "process" if configured == "docker" else configured
    # Packages follow the installation's setting: on docker they run as images built from them, and an
    # npm package there is refused (see `runtime_refusal`) rather than quietly run on the host.
    return configured


def runtime_accepts(runtime: str, source: AnySource) -> bool:
    return runtime_refusal(runtime, source) is None


def runtime_refusal(runtime: str, source: AnySource) -> str | None:
    """Why `runtime` cannot run `source`, or None when it can."""
    if runtime == "process":
        if isinstance(source, PackageSource | CommandSource):
            return None
        return f"the process runtime cannot run {source.type} sources; use the docker runtime"
    if runtime == "docker":
        if isinstance(source, ImageSource | GitSource):
            return None
        if isinstance(source, PackageSource):
            if source.registry == "pypi":
                return None
            return (
                "npm packages run on the process runtime; the docker runtime runs PyPI packages and images "
                '(set "runtime": "process" for this server)'
            )
        return "command sources run executables of the worker host, on the process runtime"
    if runtime == "kubernetes":
        if isinstance(source, ImageSource | GitSource):
            return None
        return (
            f"the kubernetes runtime runs image and git sources; a {source.type} source runs on the process "
            "or docker runtime"
        )
    if runtime == "virtual-machine":
        if isinstance(source, ImageSource | GitSource):
            return None
        return (
            f"the virtual-machine runtime runs image and git sources in a guest; a {source.type} source runs on "
            "the process or docker runtime"
        )
    return f"the {runtime} runtime cannot run {source.type} sources"
