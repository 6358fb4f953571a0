"""How a repository becomes an image: its own Dockerfile, or one generated for Python, Node or Rust.

Pure logic over a checked-out folder: nothing here runs code from the repository. An `mcp.yaml`
(this platform's manifest) or a `smithery.yaml` may name the start command, port and config schema:

    # mcp.yaml
    name: weather
    start:
      command: ["weather-mcp", "--transport", "streamable-http"]
      port: 8000
      path: /mcp
    config_schema: {type: object, required: [apiKey], properties: {apiKey: {type: string}}}
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.failures import PermanentFailure

MANIFEST_MAX_BYTES = 64 * 1024
DEFAULT_PORT = 8000
WHEELS_DIR = ".mcphost-wheels"
GENERATED_DOCKERFILE = "Dockerfile.mcphost"


class RecipeError(PermanentFailure):
    kind = "recipe_invalid"


@dataclass(frozen=True)
class BaseImages:
    python: str = "python:3.11-slim-bookworm"
    node: str = "node:22-bookworm-slim"
    rust: str = "rust:1-slim-bookworm"


@dataclass
class Recipe:
    kind: str  # dockerfile | python | node | rust
    dockerfile: str  # path of the Dockerfile inside the context
    port: int
    path: str
    exposed: list[int] = field(default_factory=list)
    generated: str | None = None  # the Dockerfile text when the platform wrote it
    name: str | None = None
    start_command: list[str] | None = None
    config_schema: dict[str, Any] | None = None
    python_requirements: list[str] = field(default_factory=list)  # fetched as wheels by the builder
    manifest: str | None = None  # mcp.yaml or smithery.yaml, when one was honoured


def _read_text(path: Path, limit: int = MANIFEST_MAX_BYTES) -> str:
    if path.is_symlink() or not path.is_file():
        raise RecipeError(f"{path.name} must be a regular file")
    if path.stat().st_size > limit:
        raise RecipeError(f"{path.name} is larger than {limit // 1024} KiB")
    return path.read_text(encoding="utf-8", errors="replace")


def exposed_ports(dockerfile: str) -> list[int]:
    """Ports from EXPOSE instructions, with ARG/ENV defaults substituted (`EXPOSE ${PORT}`)."""
    text = re.sub(r"\\\r?\n", " ", dockerfile)
    variables: dict[str, str] = {}
    ports: list[int] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction in ("ARG", "ENV"):
            for match in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)[= ]\"?([^\s\"]*)\"?", rest):
                variables.setdefault(match.group(1), match.group(2))
        elif instruction == "EXPOSE":
            for item in rest.split():
                item = re.sub(
                    r"\$\{?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}?",
                    lambda m: variables.get(m.group(1), m.group(2) or ""),
                    item,
                )
                number = item.split("/", 1)[0]
                if number.isdigit() and 0 < int(number) < 65536 and not item.endswith("/udp"):
                    ports.append(int(number))
    return ports


def _load_manifest(root: Path) -> tuple[str | None, dict[str, Any]]:
    for name in ("mcp.yaml", "mcp.yml", "smithery.yaml", "smithery.yml"):
        path = root / name
        if path.exists() or path.is_symlink():
            try:
                data = yaml.safe_load(_read_text(path))
            except yaml.YAMLError as exc:
                raise RecipeError(f"{name} is not valid YAML: {exc}") from None
            if data is None:
                data = {}
            if not isinstance(data, dict):
                raise RecipeError(f"{name} must be a mapping at the top level")
            return name, data
    return None, {}


def _command(value: Any, where: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise RecipeError(f'{where} must be a command: a list of strings such as ["server", "--http"]')
    return list(value)


def _port(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or not 0 < value < 65536:
        raise RecipeError(f"{where} must be a port number")
    return value


def _schema(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RecipeError(f"{where} must be a JSON schema object")
    return value


@dataclass
class _Manifest:
    name: str | None = None
    command: list[str] | None = None
    port: int | None = None
    path: str | None = None
    config_schema: dict[str, Any] | None = None
    dockerfile: str | None = None


def _interpret(file: str | None, data: dict[str, Any]) -> _Manifest:
    if file is None:
        return _Manifest()
    if file.startswith("mcp."):
        start = data.get("start") or {}
        if not isinstance(start, dict):
            raise RecipeError("mcp.yaml: start must be a mapping with command, port and path")
        path = start.get("path")
        if path is not None and (not isinstance(path, str) or not path.startswith("/")):
            raise RecipeError("mcp.yaml: start.path must start with '/'")
        name = data.get("name")
        return _Manifest(
            name=name if isinstance(name, str) else None,
            command=_command(start.get("command"), "mcp.yaml: start.command"),
            port=_port(start.get("port"), "mcp.yaml: start.port"),
            path=path,
            config_schema=_schema(data.get("config_schema"), "mcp.yaml: config_schema"),
        )
    # smithery.yaml: startCommand {type: http|stdio, configSchema, commandFunction}; build {dockerfile}
    start = data.get("startCommand") or {}
    build = data.get("build") or {}
    if not isinstance(start, dict) or not isinstance(build, dict):
        raise RecipeError("smithery.yaml: startCommand and build must be mappings")
    if start.get("type") == "stdio":
        raise RecipeError(
            "smithery.yaml declares a stdio server; images must serve streamable HTTP on $PORT "
            "(set startCommand.type: http, or add an mcp.yaml with start.command)"
        )
    dockerfile = build.get("dockerfile")
    if dockerfile is not None and not isinstance(dockerfile, str):
        raise RecipeError("smithery.yaml: build.dockerfile must be a path")
    return _Manifest(
        config_schema=_schema(start.get("configSchema"), "smithery.yaml: startCommand.configSchema"),
        dockerfile=dockerfile,
    )


def _inside(root: Path, relative: str, what: str) -> Path:
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()) or relative.startswith("/"):
        raise RecipeError(f"{what} {relative!r} is outside the repository")
    return path


_REQUIREMENT = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._, -]+\])?\s*([<>=!~]=?[^;#\s,]+(\s*,\s*[<>=!~]=?[^;#\s,]+)*)?\s*(;.*)?$"
)


def _requirement(line: str, where: str) -> str:
    line = line.strip()
    if not _REQUIREMENT.match(line) or "://" in line:
        raise RecipeError(
            f"{where}: {line!r} is not a plain requirement (name and version); URLs, options and "
            "editable installs are not supported in generated builds - add a Dockerfile instead"
        )
    return line


def _python(root: Path, manifest: _Manifest) -> tuple[list[str], list[str] | None, str | None]:
    """(requirements to fetch as wheels, default start command, project name)."""
    pyproject = root / "pyproject.toml"
    if pyproject.exists() or pyproject.is_symlink():
        try:
            data = tomllib.loads(_read_text(pyproject, 256 * 1024))
        except tomllib.TOMLDecodeError as exc:
            raise RecipeError(f"pyproject.toml is not valid TOML: {exc}") from None
        project = data.get("project") or {}
        if "dependencies" in (project.get("dynamic") or []):
            raise RecipeError(
                "pyproject.toml declares dynamic dependencies; list them in [project] or add a Dockerfile"
            )
        requirements = [_requirement(r, "pyproject.toml") for r in project.get("dependencies") or []]
        backend = (data.get("build-system") or {}).get("requires") or ["setuptools>=61", "wheel"]
        requirements += [_requirement(r, "pyproject.toml [build-system]") for r in backend]
        scripts = project.get("scripts") or {}
        command = [next(iter(scripts))] if scripts else None
        return requirements, command, project.get("name")
    lines = _read_text(root / "requirements.txt", 256 * 1024).splitlines()
    requirements = [
        _requirement(line, "requirements.txt") for line in lines if line.strip() and not line.startswith("#")
    ]
    for candidate in ("server.py", "main.py", "app.py"):
        if (root / candidate).is_file():
            return requirements, ["python3", candidate], None
    return requirements, None, None


def _python_dockerfile(base: str, command: list[str], port: int, project: str | None, requirements: bool) -> str:
    install = []
    if project is not None:
        install.append(f"/opt/mcp/bin/pip install --no-cache-dir --no-index --find-links /srv/mcp/{WHEELS_DIR} .")
    elif requirements:
        install.append(
            f"/opt/mcp/bin/pip install --no-cache-dir --no-index --find-links /srv/mcp/{WHEELS_DIR} -r requirements.txt"
        )
    steps = " && ".join(["python3 -m venv /opt/mcp", *install, f"rm -rf /srv/mcp/{WHEELS_DIR}"])
    return (
        f"FROM {base}\n"
        "WORKDIR /srv/mcp\n"
        "COPY . /srv/mcp\n"
        f"RUN {steps}\n"
        f"ENV PATH=/opt/mcp/bin:$PATH PORT={port} HOST=0.0.0.0 PYTHONUNBUFFERED=1\n"
        f"EXPOSE {port}\n"
        f"CMD {json.dumps(command)}\n"
    )


def _node_dockerfile(base: str, command: list[str], port: int, lockfile: bool) -> str:
    install = "npm ci --omit=dev" if lockfile else "npm install --omit=dev"
    return (
        f"FROM {base}\n"
        "WORKDIR /srv/mcp\n"
        "COPY . /srv/mcp\n"
        f"RUN {install} && (npm run --if-present build)\n"
        f"ENV PORT={port} HOST=0.0.0.0 NODE_ENV=production\n"
        f"EXPOSE {port}\n"
        f"CMD {json.dumps(command)}\n"
    )


def _rust_dockerfile(base: str, binary: str, port: int) -> str:
    return (
        f"FROM {base}\n"
        "WORKDIR /srv/mcp\n"
        "COPY . /srv/mcp\n"
        f"RUN cargo build --release --locked || cargo build --release\n"
        f"ENV PORT={port} HOST=0.0.0.0\n"
        f"EXPOSE {port}\n"
        f'CMD ["/srv/mcp/target/release/{binary}"]\n'
    )


def detect(root: Path, *, port: int | None, path: str, images: BaseImages) -> Recipe:
    """The recipe for the checked-out repository folder `root` (already checked for symlink escapes)."""
    manifest_file, data = _load_manifest(root)
    manifest = _interpret(manifest_file, data)
    mcp_path = manifest.path or path

    dockerfile_name = manifest.dockerfile or "Dockerfile"
    dockerfile = _inside(root, dockerfile_name, "Dockerfile")
    if dockerfile.exists():
        exposed = exposed_ports(_read_text(dockerfile, 256 * 1024))
        chosen = port or manifest.port or (exposed[0] if exposed else DEFAULT_PORT)
        return Recipe(
            kind="dockerfile",
            dockerfile=dockerfile_name,
            port=chosen,
            path=mcp_path,
            exposed=exposed,
            name=manifest.name,
            start_command=manifest.command,
            config_schema=manifest.config_schema,
            manifest=manifest_file,
        )

    chosen = port or manifest.port or DEFAULT_PORT
    if (root / "pyproject.toml").exists() or (root / "requirements.txt").exists():
        requirements, default_command, project = _python(root, manifest)
        command = manifest.command or default_command
        if command is None:
            raise RecipeError(
                "cannot tell how to start this Python server: add [project.scripts] to pyproject.toml, "
                "a server.py, or an mcp.yaml with start.command"
            )
        text = _python_dockerfile(images.python, command, chosen, project, bool(requirements))
        kind = "python"
    elif (root / "package.json").exists():
        try:
            package = json.loads(_read_text(root / "package.json", 256 * 1024))
        except json.JSONDecodeError as exc:
            raise RecipeError(f"package.json is not valid JSON: {exc}") from None
        bins = package.get("bin")
        default = None
        if isinstance(bins, str):
            default = ["node", bins]
        elif isinstance(bins, dict) and bins:
            default = ["node", str(next(iter(bins.values())))]
        elif isinstance(package.get("scripts"), dict) and "start" in package["scripts"]:
            default = ["npm", "start"]
        command = manifest.command or default
        if command is None:
            raise RecipeError("cannot tell how to start this Node server: add a bin or start script, or an mcp.yaml")
        lockfile = (root / "package-lock.json").exists()
        text, kind, requirements = _node_dockerfile(images.node, command, chosen, lockfile), "node", []
    elif (root / "Cargo.toml").exists():
        try:
            cargo = tomllib.loads(_read_text(root / "Cargo.toml", 256 * 1024))
        except tomllib.TOMLDecodeError as exc:
            raise RecipeError(f"Cargo.toml is not valid TOML: {exc}") from None
        binary = str((cargo.get("package") or {}).get("name") or "")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", binary):
            raise RecipeError("Cargo.toml has no [package] name to run")
        text, kind, requirements = _rust_dockerfile(images.rust, binary, chosen), "rust", []
        command = manifest.command or [f"/srv/mcp/target/release/{binary}"]
        if manifest.command:
            text = text.rsplit("CMD ", 1)[0] + f"CMD {json.dumps(manifest.command)}\n"
    else:
        raise RecipeError(
            "no Dockerfile, and no pyproject.toml, requirements.txt, package.json or Cargo.toml to build from"
        )
    return Recipe(
        kind=kind,
        dockerfile=GENERATED_DOCKERFILE,
        port=chosen,
        path=mcp_path,
        exposed=[chosen],
        generated=text,
        name=manifest.name,
        start_command=command,
        config_schema=manifest.config_schema,
        python_requirements=requirements,
        manifest=manifest_file,
    )


def missing_config(schema: dict[str, Any] | None, env: dict[str, str]) -> list[str]:
    """Required config schema properties with no matching env var (`apiKey` matches API_KEY or apiKey)."""
    if not schema:
        return []
    missing = []
    for name in schema.get("required") or []:
        if not isinstance(name, str):
            continue
        snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()
        if name not in env and snake not in env:
            missing.append(f"{name} (env {snake})")
    return missing
