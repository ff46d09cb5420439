#!/bin/sh
# Container entrypoint: derive the catalog URL from the database secret, then exec the command.
#
# ECS and Kubernetes inject the database credentials as separate variables (so Secrets
# Manager can rotate the password); the app reads one SQLAlchemy URL. Building it here keeps
# the password out of every task definition and manifest.
set -eu

if [ -z "${SURG_CATALOG_URL:-}" ] && [ -n "${SURG_DB_HOST:-}" ]; then
    SURG_CATALOG_URL="$(python - <<'PY'
import os
from urllib.parse import quote

user = quote(os.environ["DAGSTER_PG_USER"], safe="")
password = quote(os.environ["DAGSTER_PG_PASSWORD"], safe="")
host = os.environ["SURG_DB_HOST"]
port = os.environ.get("SURG_DB_PORT", "5432")
database = os.environ.get("SURG_CATALOG_DB", "surg_catalog")
print(f"postgresql+psycopg://{user}:{password}@{host}:{port}/{database}?sslmode=require")
PY
)"
    export SURG_CATALOG_URL
fi

exec "$@"
