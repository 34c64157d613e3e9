"""The MLflow store a search logs to: where it is, and whether it can be used, told in one line before any
trial starts (an unreachable server, a URI that is not one, a scheme MLflow does not take, a database whose
driver is missing)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from mlflow.tracking import MlflowClient

from tuner.errors import UserError
from tuner.guards import redact


def default_store_dir() -> Path:
    return Path(os.environ.get("TUNER_MLFLOW_DIR") or "mlflow").resolve()


def resolve_tracking_uri(arg: str | None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the embedded sqlite store under ./mlflow/."""
    uri = arg or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return absolute_sqlite(uri)
    store = default_store_dir()
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def absolute_sqlite(uri: str) -> str:
    """``sqlite:///mlflow.db`` (relative to the current folder) as ``sqlite:////abs/mlflow.db``: the store and
    its artifacts stay where the user meant when the search later runs in another folder or writes files."""
    prefix = "sqlite:///"
    path, sep, query = uri[len(prefix):].partition("?")
    if not uri.startswith(prefix) or path.startswith("/") or path in ("", ":memory:"):
        return uri
    return f"{prefix}{Path(path).expanduser().resolve()}{sep}{query}"


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps artifacts: beside an sqlite store; the server decides otherwise."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "artifacts" / experiment).as_uri()
    return None


def server_health(uri: str, shown: str):
    """The server's answer to /health, asked the way MLflow's client asks (its credentials, token and TLS
    settings from the environment: MLFLOW_TRACKING_INSECURE_TLS, MLFLOW_TRACKING_SERVER_CERT_PATH, ...)."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        return http_request(get_default_host_creds(uri), "/health", "GET", max_retries=0, timeout=5,
                            raise_on_status=False)
    except MlflowException as exc:
        cause = type(exc.__cause__ or exc.__context__ or exc).__name__   # MLflow does not chain it
        raise UserError(f"MLflow tracking server {shown} is unreachable ({cause}); start one with "
                        f"`mlflow server --host 127.0.0.1 --port 5000` or pass another --tracking-uri") from None


def check_tracking(uri: str) -> MlflowClient:
    """Fail in one line, before any trial starts, if the tracking store cannot be used."""
    shown = redact(uri)
    try:
        scheme = urlparse(uri).scheme
    except ValueError as exc:   # e.g. an unclosed IPv6 bracket
        raise UserError(f"tracking URI {shown} is not a URI ({exc}); use http(s)://host:port or "
                        f"sqlite:///path/mlflow.db") from None
    if shown != uri:    # MLflow prints each run's link, credentials and all, when a run ends
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    if scheme in ("http", "https"):
        reply = server_health(uri, shown)
        if reply.status_code != 200:
            raise UserError(f"{shown} answered {reply.status_code} to /health: is it an MLflow tracking server?")
    elif scheme.split("+")[0] not in ("sqlite", "file", "postgresql", "mysql", "mssql", "databricks", ""):
        raise UserError(f"tracking URI {shown} has an unsupported scheme {scheme!r}; use http(s)://host:port or "
                        f"sqlite:///path/mlflow.db")
    try:        # a database URI whose driver is not installed fails as the client is made
        client = MlflowClient(uri, registry_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"MLflow tracking store {shown} cannot be used: {redact(first)[:300]}") from None
    return client
