"""bin/ctl: the operator's command line. Every command works on the database named by
DATABASE_URL; refusals are one line on stderr and exit status 1, and change nothing."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from lib import config, crypto, db, ubid
from lib.errors import ApiError
from model import machine_image_store, vm_host

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Operate imagecp: locations, hosts, keys, projects, stores, images.")
location_app = typer.Typer(no_args_is_help=True, help="Locations hosts live in.")
host_app = typer.Typer(no_args_is_help=True, help="Hosts that hold VM disks.")
app.add_typer(location_app, name="location")
app.add_typer(host_app, name="host")

T = TypeVar("T")


class Refused(Exception):
    """An operator error: printed as one line, exit status 1."""


def _fail(message: str) -> None:
    typer.echo(f"ctl: {message}", err=True)
    raise typer.Exit(1)


def _in_transaction(work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    async def run() -> T:
        engine = db.create_engine(config.load().database_url, pool_size=1,
                                  application_name="ctl")
        try:
            async with db.transaction(engine) as connection:
                return await work(connection)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except (Refused, vm_host.HostRefused, machine_image_store.StoreRefused, crypto.SecretError,
            config.ConfigError) as error:
        _fail(str(error))
    except ApiError as error:
        details = "".join(f"; {field}: {text}" for field, text in (error.details or {}).items())
        _fail(f"{error.message}{details}")
    except IntegrityError as error:  # a constraint the command did not check first
        _fail(f"refused by the database: {str(error.orig).splitlines()[0]}")
    except OSError as error:
        _fail(f"cannot reach the database: {error}")
    raise AssertionError("unreachable")


@app.command("master-key")
def master_key() -> None:
    """Print a new master key for IMAGECP_MASTER_KEY (keep it in your secret store)."""
    typer.echo(crypto.generate_master_key())


@location_app.command("create")
def location_create(name: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Create a location: lowercase letters, digits and dashes."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", name):
        _fail(f"invalid location name {name!r}: use lowercase letters, digits and dashes")

    async def create(connection: AsyncConnection) -> str:
        location_id = ubid.generate(ubid.TYPE_LOCATION)
        try:
            async with connection.begin_nested():
                await connection.execute(text("INSERT INTO location (id, name) VALUES (:id, :n)"),
                                         {"id": location_id, "n": name})
        except IntegrityError:
            raise Refused(f"a location named {name!r} exists already") from None
        return ubid.to_ubid(location_id)

    created = _in_transaction(create)
    typer.echo(json.dumps({"id": created, "name": name}) if as_json else created)


@host_app.command("add")
def host_add(
    location: Annotated[str, typer.Option(help="the host's location")],
    address: Annotated[str, typer.Option(help="address or name to reach the host at")],
    port: Annotated[int, typer.Option(help="its SSH port")] = 22,
    user: Annotated[str, typer.Option(help="the account we log in as")] = "imagecp",
    host_key: Annotated[str | None, typer.Option(help="the host's public key, to pin")] = None,
    accept_new: Annotated[bool, typer.Option(help="pin the first key the host shows")] = False,
    python: Annotated[str, typer.Option(
        help="the host's Python for the agent (with zstandard, cryptography, obstore)")
    ] = "python3",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Add a host and start bootstrapping it. Prints the public key the host must authorize."""

    async def add(connection: AsyncConnection) -> tuple[Any, str]:
        return await vm_host.assemble(connection, location=location, address=address,
                                      port=port, user=user, host_key=host_key,
                                      accept_new=accept_new, python=python,
                                      master_key=crypto.master_key())

    host_id, public = _in_transaction(add)
    if as_json:
        typer.echo(json.dumps({"id": ubid.to_ubid(host_id), "authorize": public}))
    else:
        typer.echo(f"host {ubid.to_ubid(host_id)} added; authorize this key for {user}:")
        typer.echo(public)


@host_app.command("list")
def host_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Hosts with their state, and why they are not ready."""

    async def rows(connection: AsyncConnection) -> list[dict[str, Any]]:
        result = await connection.execute(text(
            "SELECT h.id, l.name AS location, s.address, s.port, h.state, h.state_reason,"
            " h.agent_version FROM vm_host h JOIN location l ON l.id = h.location_id"
            " JOIN sshable s ON s.id = h.id ORDER BY h.created_at"))
        return [{**row._mapping, "id": ubid.to_ubid(row.id)} for row in result]

    hosts = _in_transaction(rows)
    for host in hosts:
        if as_json:
            typer.echo(json.dumps(host))
        else:
            reason = f"  ({host['state_reason']})" if host["state_reason"] else ""
            typer.echo(f"{host['id']}  {host['location']}  {host['address']}:{host['port']}"
                       f"  {host['state']}{reason}")


from lib.ctl import images, tokens  # noqa: E402, F401  (register their commands)
