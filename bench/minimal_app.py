"""The ceiling for ``bench/api.py``: the smallest FastAPI app that answers a status read.

One primary-key SELECT of a transcription job on the same PostgreSQL database, returned as
JSON, as a new user would write it: a plain ``def`` endpoint, a SQLAlchemy pool that keeps a
connection for every client of the load (so it never opens one per request), a bearer check.
Run by the bench as ``uvicorn bench.minimal_app:app`` with the same worker count as Relay.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Header, HTTPException
from sqlalchemy import create_engine, text

engine = create_engine(
    os.environ["RELAY_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://"),
    pool_size=int(os.environ.get("MINIMAL_POOL_SIZE", "32")),
    max_overflow=0,
)
TOKEN = os.environ.get("RELAY_API_TOKEN", "")
app = FastAPI()


@app.get("/api/transcriptions/{job_id}")
def read_job(job_id: str, authorization: str = Header(default="")) -> dict[str, object]:
    if authorization != f"Bearer {TOKEN}":
        raise HTTPException(401)
    with engine.connect() as connection:
        row = (
            connection.execute(
                text("SELECT * FROM transcription_job WHERE id = :id"), {"id": job_id}
            )
            .mappings()
            .first()
        )
    if row is None:
        raise HTTPException(404)
    return dict(row)
