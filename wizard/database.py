"""Steps 1-3: connect (asking again on failure), pick tables, and for each the timestamp column,
primary key and retention, with the rows that retention makes eligible now."""
from __future__ import annotations

import getpass
import os
import re
from dataclasses import dataclass, replace
from typing import Any

import click
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from common.pg.db import application_name, connect, describe_target, session_settings
from common.errors import ServiceUnavailable, UsageError
from wizard.model import DEFAULT_PASSWORD_ENV, DatabaseAnswer, Flags
from wizard.prompts import Prompter, env_name_check, nonempty_check

#: Counting eligible rows of an unindexed giant table must not hold the wizard for ever.
WIZARD_STATEMENT_TIMEOUT = "60s"


@dataclass(frozen=True)
class Target:
    """Where to connect, without the password."""

    dsn: str | None
    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    user: str | None = None

    def conninfo(self, password: str | None) -> str:
        extra = {"password": password} if password else {}
        if self.dsn:
            return make_conninfo(self.dsn, **extra)
        return make_conninfo(host=self.host, port=self.port, dbname=self.dbname, user=self.user, **extra)

    def dbname_guess(self) -> str:
        d = conninfo_to_dict(self.conninfo(None))
        return str(d.get("dbname") or d.get("user") or "postgres")


def split_dsn(dsn: str) -> tuple[str, str | None]:
    """(DSN without its password, the password or None); a malformed DSN is a usage error."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        # libpq quotes pieces of the DSN in its message; one of them could be the password.
        reason = re.sub(r'"[^"]{2,}"', '"..."', str(exc).splitlines()[0] if str(exc) else "unparseable")
        raise UsageError(f"--dsn: not a valid PostgreSQL DSN ({reason})") from None
    password = params.pop("password", None)
    if password is None:
        return dsn, None
    return make_conninfo("", **{k: v for k, v in params.items() if v is not None}), str(password)


def _dsn_check(value: str) -> str | None:
    try:
        split_dsn(value)
    except UsageError as exc:
        return str(exc).removeprefix("--dsn: ")
    return None


def _ask_target(p: Prompter, flags: Flags, prev: Target | None) -> tuple[Target, str | None]:
    scripted_without_dsn = not p.interactive and not flags.dsn and flags.dbname
    dsn = p.ask("PostgreSQL DSN (Enter to give host, port, database and user instead)", flag="--dsn",
                given=flags.dsn, default=prev.dsn if prev else None,
                optional=p.interactive or bool(scripted_without_dsn), check=_dsn_check,
                may_hold_secret=True)
    if dsn:
        clean, password = split_dsn(dsn)
        if password:
            p.warn("the DSN contains a password: it is used to connect now and is not written to the file")
        return Target(dsn=clean), password
    host = p.ask("Host", flag="--host", given=flags.host, default=(prev and prev.host) or "localhost")
    port = p.ask("Port", flag="--port", given=flags.port, default=(prev and prev.port) or 5432,
                 type=click.IntRange(1, 65535))
    dbname = p.ask("Database", flag="--dbname", given=flags.dbname, default=prev and prev.dbname, check=nonempty_check)
    user = p.ask("User", flag="--user", given=flags.user, default=(prev and prev.user) or getpass.getuser())
    return Target(dsn=None, host=host, port=port, dbname=dbname, user=user), None


def _password(p: Prompter, env_name: str, from_dsn: str | None) -> str | None:
    if from_dsn:
        return from_dsn
    if os.environ.get(env_name):
        p.info(f"using the password in ${env_name}")
        return os.environ[env_name]
    return p.secret("Password (hidden; used to connect now, never written to the file; Enter for none)")


def database_step(p: Prompter, flags: Flags) -> tuple[psycopg.Connection[Any], DatabaseAnswer]:
    """Connect, asking again (interactive) until it works; scripted runs stop with exit 3."""
    prev: Target | None = None
    env_name: str | None = None
    while True:
        target, dsn_password = _ask_target(p, flags, prev)
        if env_name is None:  # asked once; a retry asks only for the target and the password
            env_name = p.ask("Environment variable the archiver reads the password from", flag="--password-env",
                             given=flags.password_env, default=DEFAULT_PASSWORD_ENV, check=env_name_check)
        info = target.conninfo(_password(p, env_name, dsn_password))
        try:
            conn = connect(info, session_settings(application_name=application_name(role="wizard"),
                                                  statement_timeout=WIZARD_STATEMENT_TIMEOUT, lock_timeout="5s"))
        except ServiceUnavailable as exc:
            if not p.interactive:
                raise
            p.error(f"{exc}; try again")
            prev, flags = target, _without_connection_flags(flags)
            continue
        conn.read_only = True  # the wizard only reads the catalog and counts
        p.info(f"connected to {describe_target(info)}")
        name = p.ask("Name for this database in the config", flag="--database-name", given=flags.database_name,
                     default=target.dbname_guess(), check=nonempty_check)
        return conn, DatabaseAnswer(name=name, password_env=env_name, dsn=target.dsn, host=target.host,
                                    port=target.port, dbname=target.dbname, user=target.user)


def _without_connection_flags(flags: Flags) -> Flags:
    """After a failed connection the flags' values become defaults of a fresh round of questions."""
    return replace(flags, dsn=None, host=None, port=None, dbname=None, user=None)
