"""dlt's REST API source, configured as its docs describe for this API, loading into DuckDB.

The List Sessions endpoint is a POST whose JSON body carries ``page_num`` (1-based) and whose
answer splits each page into three lists plus ``has_more``. In dlt's terms that is a
``page_number`` paginator with ``page_body_path="page_num"``, ``base_page=1``,
``has_more_path="has_more"``, ``total_path=None`` and ``stop_after_empty_page=False`` (a page
may be empty while more follow), and a ``data_selector`` picking all three lists. Sessions
are merged on ``id`` (the documented way to keep one row per key, as the package's cache
does); ``write_disposition="append"`` is measured too as dlt's cheapest path.

dlt is an optional benchmark dependency (the ``bench`` extra). Nothing here touches the
network: telemetry is off and every dlt directory lives in a temporary folder.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any

DATA_SELECTOR = "$['today','last_week','older'][*]"


def dlt_available() -> bool:
    """True when dlt can be imported (the ``bench`` extra is installed)."""
    return importlib.util.find_spec("dlt") is not None


def offline_env(workdir: str) -> dict[str, str]:
    """Environment that keeps dlt off the network and out of the user's home directory."""
    return {
        "RUNTIME__DLTHUB_TELEMETRY": "false",
        "RUNTIME__SENTRY_DSN": "",
        "RUNTIME__LOG_LEVEL": "WARNING",
        "DLT_DATA_DIR": str(Path(workdir) / "dlt-data"),
        "DLT_PROJECT_DIR": str(Path(workdir) / "dlt-project"),
    }


def source_config(base_url: str, api_key: str, slug: str, write_disposition: str) -> dict[str, Any]:
    """The rest_api source configuration for List Sessions (see the module docstring)."""
    resource: dict[str, Any] = {
        "name": "sessions",
        "write_disposition": write_disposition,
        "endpoint": {
            "path": f"{slug}/sessions/",
            "method": "POST",
            "json": {"page_num": 1, "search_query": ""},
            "data_selector": DATA_SELECTOR,
            "paginator": {
                "type": "page_number",
                "page_body_path": "page_num",
                "base_page": 1,
                "total_path": None,
                "has_more_path": "has_more",
                "stop_after_empty_page": False,
            },
        },
    }
    if write_disposition == "merge":
        resource["primary_key"] = "id"
    return {
        "client": {
            "base_url": base_url.rstrip("/") + "/",
            "auth": {
                "type": "api_key",
                "name": "x-api-key",
                "api_key": api_key,
                "location": "header",
            },
        },
        "resources": [resource],
    }


def dlt_load(
    base_url: str,
    api_key: str,
    slug: str,
    db_path: str,
    workdir: str,
    expected: int,
    write_disposition: str = "merge",
) -> dict[str, Any]:
    """Run the dlt pipeline once into ``db_path``; return timing and coverage."""
    os.environ.update(offline_env(workdir))
    import dlt
    import duckdb
    from dlt.sources.rest_api import rest_api_source

    started = time.perf_counter()
    source = rest_api_source(source_config(base_url, api_key, slug, write_disposition))
    pipeline = dlt.pipeline(
        pipeline_name="guru_bench",
        destination=dlt.destinations.duckdb(db_path),
        dataset_name="guru",
        pipelines_dir=str(Path(workdir) / "pipelines"),
        progress=None,
    )
    pipeline.run(source)
    elapsed = time.perf_counter() - started
    con = duckdb.connect(db_path, read_only=True)
    rows, distinct = con.execute(
        "SELECT count(*), count(DISTINCT id) FROM guru.sessions"
    ).fetchone()
    con.close()
    return {
        "elapsed": elapsed,
        "rows": rows,
        "distinct": distinct,
        "expected": expected,
        "complete": distinct == expected,
        "dlt_version": dlt.__version__,
    }
