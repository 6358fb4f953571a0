"""Git source validation, the operator's URL policy, image recipes, platform checks: pure logic."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from builds import git, recipes
from builds.images import emulation_missing, host_arch
from builds.registry import RegistryRejected, load_dockerconfig
from core.gitpolicy import GitUrlRejected, check_git_url_policy
from core.settings import Settings
from core.sources import GitSource, parse_source
from core.telemetry import EVENT_NAMES, BuildEvent

IMAGES = recipes.BaseImages(python="py:base", node="node:base", rust="rust:base")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ext::sh -c touch% /tmp/pwned", "remote helpers"),
        ("-uhttps://example.com/x.git", "must not start with '-'"),
        ("--upload-pack=touch /tmp/x", "must not start with '-'"),
        ("git@github.com:acme/weather.git", "full URL"),
        ("ssh://git@github.com/acme/weather.git", "not supported"),
        ("ftp://example.com/repo.git", "not supported"),
        ("fd::17/foo", "remote helpers"),
        ("https://user:token@github.com/acme/x.git", "credentials"),
        ("https://github.com/acme/x.git\nfoo", "control characters"),
        ("https:///nohost.git", "no host"),
        ("file://relative/path", "absolute path"),
        ("https://" + "a" * 2100, "longer than 2048"),
    ],
)
def test_malformed_git_urls_are_rejected_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        GitSource(repo_url=url)
    assert message in str(info.value)


def test_a_plain_https_url_is_accepted_and_defaults_are_sensible() -> None:
    source = parse_source({"type": "git", "repo_url": "https://github.com/acme/weather-mcp.git"})
    assert isinstance(source, GitSource)
    assert source.branch is None and source.subdirectory is None and source.path == "/mcp"


@pytest.mark.parametrize("branch", ["-x", "a..b", "a b", "x@{1}", "main/", "feat//x", ".hidden/"])
def test_bad_branch_names_are_rejected(branch: str) -> None:
    with pytest.raises(ValidationError):
        GitSource(repo_url="https://example.com/x.git", branch=branch)


@pytest.mark.parametrize("subdirectory", ["../etc", "/abs", "a/../../b", "-rf", "a/./b"])
def test_subdirectories_must_stay_inside_the_repository(subdirectory: str) -> None:
    with pytest.raises(ValidationError):
        GitSource(repo_url="https://example.com/x.git", subdirectory=subdirectory)


def test_ref_must_be_a_full_commit_id() -> None:
    with pytest.raises(ValidationError):
        GitSource(repo_url="https://example.com/x.git", ref="HEAD~1")
    assert GitSource(repo_url="https://example.com/x.git", ref="a" * 40).ref == "a" * 40


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/x.git",
        "file:///srv/repos/x.git",
        "https://127.0.0.1/x.git",
        "https://10.1.2.3/x.git",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/x.git",
        "https://localhost/x.git",
        "https://metadata.google.internal/x.git",
    ],
)
def test_policy_blocks_insecure_and_private_targets_unless_allowed(url: str) -> None:
    with pytest.raises(GitUrlRejected):
        check_git_url_policy(url, allow_insecure=False)
    check_git_url_policy(url, allow_insecure=True)


def test_policy_accepts_public_https() -> None:
    check_git_url_policy("https://github.com/acme/x.git", allow_insecure=False)
    check_git_url_policy("https://140.82.112.3/acme/x.git", allow_insecure=False)


def test_exposed_ports_follow_arg_and_env_defaults() -> None:
    dockerfile = (
        "FROM base\nARG PORT=9100\nENV OTHER=7000\n"
        "EXPOSE ${PORT}/tcp\nEXPOSE 53/udp \\\n  8081\nEXPOSE $OTHER\n# EXPOSE 1\n"
    )
    assert recipes.exposed_ports(dockerfile) == [9100, 8081, 7000]


def test_dockerfile_recipe_reads_expose(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM x\nEXPOSE 9000\n")
    recipe = recipes.detect(tmp_path, port=None, path="/mcp", images=IMAGES)
    assert (recipe.kind, recipe.port, recipe.generated) == ("dockerfile", 9000, None)
    # An explicit port on the source wins over EXPOSE.
    assert recipes.detect(tmp_path, port=7000, path="/mcp", images=IMAGES).port == 7000


def test_python_recipe_is_generated_from_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\n'
        '[project]\nname = "weather"\ndependencies = ["mcp>=2.3", "httpx"]\n'
        '[project.scripts]\nweather-mcp = "weather:main"\n'
    )
    recipe = recipes.detect(tmp_path, port=None, path="/mcp", images=IMAGES)
    assert recipe.kind == "python" and recipe.port == 8000
    assert recipe.python_requirements == ["mcp>=2.3", "httpx", "setuptools>=61"]
    assert recipe.generated is not None
    assert recipe.generated.startswith("FROM py:base\n")
    assert 'CMD ["weather-mcp"]' in recipe.generated and "EXPOSE 8000" in recipe.generated
    assert "--no-index" in recipe.generated and "PORT=8000" in recipe.generated


def test_mcp_yaml_sets_command_port_path_and_schema(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("mcp>=2.3\n")
    (tmp_path / "mcp.yaml").write_text(
        "name: weather\nstart:\n  command: [python3, -m, weather, --http]\n  port: 9200\n  path: /rpc\n"
        "config_schema: {type: object, required: [apiKey], properties: {apiKey: {type: string}}}\n"
    )
    recipe = recipes.detect(tmp_path, port=None, path="/mcp", images=IMAGES)
    assert (recipe.port, recipe.path, recipe.name, recipe.manifest) == (9200, "/rpc", "weather", "mcp.yaml")
    assert recipe.start_command == ["python3", "-m", "weather", "--http"]
    assert recipe.generated is not None and '"--http"' in recipe.generated
    assert recipes.missing_config(recipe.config_schema, {}) == ["apiKey (env API_KEY)"]
    assert recipes.missing_config(recipe.config_schema, {"API_KEY": "x"}) == []


def test_smithery_stdio_servers_are_refused_with_a_way_out(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text('{"name": "x", "bin": "dist/index.js"}')
    (tmp_path / "smithery.yaml").write_text("startCommand:\n  type: stdio\n  commandFunction: '() => ({})'\n")
    with pytest.raises(recipes.RecipeError, match="stdio"):
        recipes.detect(tmp_path, port=None, path="/mcp", images=IMAGES)


def test_smithery_build_dockerfile_and_schema_are_honoured(tmp_path: Path) -> None:
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "Server.Dockerfile").write_text("FROM x\nEXPOSE 3333\n")
    (tmp_path / "smithery.yaml").write_text(
        "build:\n  dockerfile: docker/Server.Dockerfile\nstartCommand:\n  type: http\n"
        "  configSchema: {type: object, required: [token]}\n"
    )
    recipe = recipes.detect(tmp_path, port=None, path="/mcp", images=IMAGES)
    assert (recipe.dockerfile, recipe.port) == ("docker/Server.Dockerfile", 3333)
    assert recipe.config_schema == {"type": "object", "required": ["token"]}


def test_node_and_rust_recipes(tmp_path: Path) -> None:
    node = tmp_path / "node"
    node.mkdir()
    (node / "package.json").write_text('{"name": "x", "bin": {"x": "dist/index.js"}}')
    (node / "package-lock.json").write_text("{}")
    recipe = recipes.detect(node, port=None, path="/mcp", images=IMAGES)
    assert recipe.kind == "node" and recipe.generated is not None
    assert "npm ci" in recipe.generated and '["node", "dist/index.js"]' in recipe.generated
    rust = tmp_path / "rust"
    rust.mkdir()
    (rust / "Cargo.toml").write_text('[package]\nname = "weather-mcp"\nversion = "0.1.0"\n')
    recipe = recipes.detect(rust, port=None, path="/mcp", images=IMAGES)
    assert recipe.kind == "rust" and recipe.generated is not None
    assert "target/release/weather-mcp" in recipe.generated and recipe.generated.startswith("FROM rust:base")


@pytest.mark.parametrize(
    "line",
    ["--index-url http://169.254.169.254/simple", "-e .", "git+https://example.com/x.git", "x @ https://e.com/x.whl"],
)
def test_requirements_with_options_or_urls_are_refused(tmp_path: Path, line: str) -> None:
    (tmp_path / "requirements.txt").write_text(f"mcp\n{line}\n")
    (tmp_path / "server.py").write_text("")
    with pytest.raises(recipes.RecipeError, match="not a plain requirement"):
        recipes.detect(tmp_path, port=None, path="/mcp", images=IMAGES)


def test_nothing_to_build_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("hi")
    with pytest.raises(recipes.RecipeError, match="no Dockerfile"):
        recipes.detect(tmp_path, port=None, path="/mcp", images=IMAGES)


def test_symlink_escapes_are_found(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "ok.py").write_text("")
    (tmp_path / "inside").symlink_to("src/ok.py")
    git.check_context(tmp_path)
    (tmp_path / "Dockerfile").symlink_to("/etc/passwd")
    with pytest.raises(git.GitRejected, match="Dockerfile points outside"):
        git.check_context(tmp_path)
    (tmp_path / "Dockerfile").unlink()
    (tmp_path / "src" / "up").symlink_to("../../..")
    with pytest.raises(git.GitRejected, match="outside the build context"):
        git.check_context(tmp_path)


def test_platforms_without_emulation_are_named(tmp_path: Path) -> None:
    assert emulation_missing(f"linux/{host_arch()}", tmp_path) is None
    other = "arm64" if host_arch() != "arm64" else "amd64"
    message = emulation_missing(f"linux/{other}", tmp_path)
    assert message is not None and "qemu-user-static" in message and f"linux/{other}" in message
    qemu = {"arm64": "aarch64", "amd64": "x86_64"}[other]
    (tmp_path / f"qemu-{qemu}").write_text("enabled\ninterpreter /usr/bin/qemu\n")
    assert emulation_missing(f"linux/{other}", tmp_path) is None
    assert "only linux" in (emulation_missing("windows/amd64", tmp_path) or "")


def test_dockerconfig_credentials(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    token = base64.b64encode(b"robot:s3cret").decode()
    path.write_text(json.dumps({"auths": {"reg.example.com:5000": {"auth": token}}}))
    creds = load_dockerconfig(path, "reg.example.com:5000")
    assert creds is not None and (creds.username, creds.password) == ("robot", "s3cret")
    assert load_dockerconfig(path, "other.example.com") is None
    with pytest.raises(RegistryRejected, match="does not exist"):
        load_dockerconfig(tmp_path / "missing.json", "reg.example.com:5000")
    path.write_text("{not json")
    with pytest.raises(RegistryRejected, match="not a readable dockerconfigjson"):
        load_dockerconfig(path, "reg.example.com:5000")


def test_registry_settings_are_validated() -> None:
    base = {"jwt_secret": "k" * 40, "secrets_key": "s" * 40}
    assert Settings.model_validate(base).arch_targets == ["linux/amd64"]
    many = Settings.model_validate({**base, "registry_arch_targets": " linux/amd64, linux/arm64/v8 "})
    assert many.arch_targets == ["linux/amd64", "linux/arm64/v8"]
    with pytest.raises(ValidationError, match="platform"):
        Settings.model_validate({**base, "registry_arch_targets": "amd64"})
    with pytest.raises(ValidationError, match="without a scheme"):
        Settings.model_validate({**base, "registry": "https://reg.example.com"})
    assert Settings.model_validate({**base, "registry": "reg.example.com:5000/team/"}).registry == (
        "reg.example.com:5000/team"
    )


def test_telemetry_schema_is_closed() -> None:
    assert {"push_retry", "auth_refresh_succeeded", "manifest_prune_failed", "auth_rotation_skipped"} <= set(
        EVENT_NAMES
    )
    event = BuildEvent(deployment_id="d", attempt=2, retry_limit=3, error_kind="connection_reset")
    assert event.stored() == {"deployment_id": "d", "attempt": 2, "retry_limit": 3, "error_kind": "connection_reset"}
    with pytest.raises(ValidationError):
        BuildEvent(deployment_id="d", password="x")  # type: ignore[call-arg]
