"""Create the platform's databases and application role on a fresh PostgreSQL (RDS) instance.

Run once after the data stack is deployed, as a one-off task of the ``surg-<env>-dbadmin``
task definition (deploy/README.md, section 2), or by hand against any PostgreSQL. Idempotent:
running it again changes nothing that already exists.

The admin account (``surg_admin``, secret ``surg-<env>/database-admin``) owns nothing the
applications use. The application role (``surg_app``, secret ``surg-<env>/database``) owns
both databases, so catalog migrations and Dagster's schema run as the application, and
Secrets Manager's multi-user rotation can alternate between ``surg_app`` and a clone of it
without ever invalidating the password running tasks hold.

Environment: ``SURG_DB_HOST``, ``SURG_DB_PORT`` (5432), ``SURG_DB_ADMIN_USER``,
``SURG_DB_ADMIN_PASSWORD``, ``DAGSTER_PG_USER`` and ``DAGSTER_PG_PASSWORD`` (the application
role), ``SURG_CATALOG_DB`` (surg_catalog), ``DAGSTER_PG_DB`` (dagster), ``SURG_DB_SSLMODE``
(require).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

import psycopg
from psycopg import sql

REQUIRED_ENV = (
    "SURG_DB_HOST",
    "SURG_DB_ADMIN_USER",
    "SURG_DB_ADMIN_PASSWORD",
    "DAGSTER_PG_USER",
    "DAGSTER_PG_PASSWORD",
)


def bootstrap(
    connection: psycopg.Connection, app_user: str, app_password: str, databases: Iterable[str]
) -> list[str]:
    """Ensure the application role exists and owns every database; return what was done.

    Args:
        connection: Autocommit connection as the admin (CREATE DATABASE cannot run in a
            transaction).
        app_user: Application role name.
        app_password: Its initial password (rotation takes over afterwards).
        databases: Databases the application owns (catalog, Dagster storage).
    """
    actions: list[str] = []
    role = sql.Identifier(app_user)
    exists = connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (app_user,))
    if exists.fetchone() is None:
        # CREATE ROLE takes no bind parameters; Literal quotes the password safely.
        connection.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(app_password))
        )
        actions.append(f"created role {app_user}")
    # On PostgreSQL 16+ (RDS) a non-superuser admin must be a member of a role to hand it
    # database ownership; harmless elsewhere.
    connection.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(role))
    for database in databases:
        name = sql.Identifier(database)
        found = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        if found.fetchone() is None:
            connection.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(name, role))
            actions.append(f"created database {database}")
        else:
            connection.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(name, role))
            actions.append(f"database {database} owned by {app_user}")
        # Multi-user rotation logs the services in as `<app_user>_clone` every other period;
        # every session in these databases acts as the application role, so tables created
        # by migrations always belong to it, whichever of the two logins ran them.
        connection.execute(sql.SQL("ALTER DATABASE {} SET role TO {}").format(name, role))
    return actions


def main() -> int:
    """Bootstrap from the environment; print one line per action, or one line of error."""
    missing = [name for name in REQUIRED_ENV if not os.environ.get(name)]
    if missing:
        print(
            f"bootstrap_database: missing environment variables {', '.join(missing)}; run it "
            "as the surg-<env>-dbadmin task, which injects them from Secrets Manager.",
            file=sys.stderr,
        )
        return 2
    env = os.environ
    try:
        with psycopg.connect(
            host=env["SURG_DB_HOST"],
            port=int(env.get("SURG_DB_PORT", "5432")),
            user=env["SURG_DB_ADMIN_USER"],
            password=env["SURG_DB_ADMIN_PASSWORD"],
            dbname="postgres",
            sslmode=env.get("SURG_DB_SSLMODE", "require"),
            autocommit=True,
        ) as connection:
            actions = bootstrap(
                connection,
                env["DAGSTER_PG_USER"],
                env["DAGSTER_PG_PASSWORD"],
                [env.get("SURG_CATALOG_DB", "surg_catalog"), env.get("DAGSTER_PG_DB", "dagster")],
            )
    except psycopg.OperationalError as error:
        print(
            f"bootstrap_database: cannot reach PostgreSQL at {env['SURG_DB_HOST']} as "
            f"{env['SURG_DB_ADMIN_USER']} ({str(error).strip().splitlines()[0]}); check the "
            "task's security group and the admin secret.",
            file=sys.stderr,
        )
        return 1
    for action in actions:
        print(f"bootstrap_database: {action}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
