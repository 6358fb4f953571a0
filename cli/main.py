"""The `mcphost` command: the command groups of cli/commands put together."""

from __future__ import annotations

import typer

from cli.commands import (
    account,
    admin,
    approvals,
    deployments,
    evaluations,
    files,
    keys,
    observe,
    platform,
    promotions,
    remediation,
    secrets,
    servers,
)

app = typer.Typer(
    help="MCP Host: build, deploy, serve and govern MCP servers.", no_args_is_help=True, add_completion=False
)
# Commands of their own first, each module's in the order it defines them (`mcphost --help` lists them so);
# added without a name, their commands join the top level.
app.add_typer(platform.app)
app.add_typer(account.app)
app.add_typer(deployments.app)
app.add_typer(observe.app)
# Then the command groups.
app.add_typer(servers.app, name="servers")
app.add_typer(admin.app, name="admin")
app.add_typer(secrets.app, name="secrets")
app.add_typer(remediation.app, name="remediation")
app.add_typer(files.app, name="files")
app.add_typer(keys.app, name="keys")
app.add_typer(evaluations.app, name="eval")
app.add_typer(approvals.app, name="approvals")
app.add_typer(promotions.app, name="promote")


def main() -> None:
    app(prog_name="mcphost")


if __name__ == "__main__":
    main()
