"""``fedseg aggregator`` commands: ``serve`` the service, ``create-researcher`` on the box."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Run the federated aggregator service."
)


@app.command("serve")
def serve(
    host: Annotated[
        str | None, typer.Option(help="bind address [env FEDSEG_AGG_HOST, default 127.0.0.1]")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="TCP port [env FEDSEG_AGG_PORT, default 8080]")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="database and blob store [env FEDSEG_AGG_DATA_DIR]")
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="SQLAlchemy URL, e.g. postgresql+psycopg://fedseg@db/fedseg "
            "[env FEDSEG_AGG_DATABASE_URL, default SQLite in the data dir]"
        ),
    ] = None,
    dev: Annotated[
        bool, typer.Option("--dev", help="allow starting without an admin token")
    ] = False,
    admin_token_file: Annotated[
        Path | None, typer.Option(help="file holding the admin token")
    ] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM)")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
    site_ca_certs: Annotated[
        Path | None,
        typer.Option(help="CA of site client certificates: mutual TLS for sites (PEM)"),
    ] = None,
    env_file: Annotated[Path | None, typer.Option(help="file of FEDSEG_AGG_* settings")] = None,
) -> None:
    """Serve the aggregator API with uvicorn (httptools + uvloop)."""
    from data_specs import startup_gc

    startup_gc.pause()  # until the app is built: a tenth of the start-up's CPU otherwise
    from pydantic import ValidationError
    from sqlalchemy.exc import SQLAlchemyError

    from aggregator.api.app import create_app
    from aggregator.http_server import Server, uvicorn_config
    from aggregator.logs import configure_logging
    from aggregator.malloc_arenas import limit_malloc_arenas
    from aggregator.open_files import raise_open_files_limit
    from aggregator.settings import AggregatorSettings
    from aggregator.storage.db.engine import database_problem

    given: dict[str, Any] = {
        "host": host,
        "port": port,
        "data_dir": data_dir,
        "database_url": database_url,
        "admin_token_file": admin_token_file,
        "ssl_certfile": ssl_certfile,
        "ssl_keyfile": ssl_keyfile,
        "site_ca_certs": site_ca_certs,
    }
    overrides = {k: v for k, v in given.items() if v is not None}
    if dev:
        overrides["dev"] = True
    try:
        settings = AggregatorSettings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        for error in exc.errors():
            typer.echo(f"fedseg aggregator: {error['msg']}", err=True)
        raise typer.Exit(2) from None
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    raise_open_files_limit()  # a descriptor per waiting site and per update aggregated
    limit_malloc_arenas(settings.malloc_arenas)  # before any thread: fewer fragments kept
    try:
        api = create_app(settings)
    except (SQLAlchemyError, ValueError) as exc:
        typer.echo(
            f"fedseg aggregator: cannot open the database: {database_problem(exc)}", err=True
        )
        raise typer.Exit(1) from None
    startup_gc.resume()  # and freezes the start-up's objects: later collections skip them
    config = uvicorn_config(api, settings, loop="uvloop")
    # Waiting long polls answer 204 as soon as the server starts to stop.
    server = Server(config, on_shutdown=api.state.services.board.close)
    server.run()
    if not server.started:  # as uvicorn.run: a port in use or unreadable TLS files
        raise typer.Exit(3)


@app.command("gc")
def gc(
    data_dir: Annotated[Path, typer.Option(help="the aggregator's data dir (service stopped)")],
    grace_hours: Annotated[float, typer.Option(min=0.0, help="keep blobs newer than this")] = 24.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count only")] = False,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL if not SQLite in data dir")
    ] = None,
) -> None:
    """Remove blobs that no database row names (run with the service stopped)."""
    from aggregator.settings import default_database_url
    from aggregator.storage.blob_gc import collect
    from aggregator.storage.blobs import BlobStore
    from aggregator.storage.db import Database

    database = Database(database_url or default_database_url(data_dir))
    database.upgrade()
    try:
        with database.session() as session:
            report = collect(
                session, BlobStore(data_dir / "blobs"), grace_s=grace_hours * 3600, dry_run=dry_run
            )
    finally:
        database.dispose()
    verb = "would remove" if dry_run else "removed"
    typer.echo(f"{verb} {report.removed} blob(s), {report.freed_bytes} bytes; kept {report.kept}")


@app.command("create-researcher")
def create_researcher(
    data_dir: Annotated[Path, typer.Option(help="the aggregator's data dir")],
    name: Annotated[str, typer.Option(help="the researcher's unique name")],
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL if not SQLite in data dir")
    ] = None,
) -> None:
    """Create a researcher directly in the database and print its token (admins on the box)."""
    from pydantic import ValidationError

    from aggregator.crud.principals import create_researcher as create
    from aggregator.errors import AggregatorError
    from aggregator.settings import default_database_url
    from aggregator.storage.db import Database
    from data_specs.researcher import ResearcherCreate

    try:
        body = ResearcherCreate(name=name)
    except ValidationError as exc:
        typer.echo(f"fedseg aggregator: invalid name: {exc.errors()[0]['msg']}", err=True)
        raise typer.Exit(2) from None
    database = Database(database_url or default_database_url(data_dir))
    database.upgrade()
    try:
        with database.session() as session:
            researcher, token = create(session, name=body.name, actor="admin:cli")
            session.commit()
    except AggregatorError as exc:
        typer.echo(f"fedseg aggregator: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        database.dispose()
    typer.echo(f"researcher {researcher.name} ({researcher.id})", err=True)
    typer.echo(token)
