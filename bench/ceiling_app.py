"""The ceiling for the ingest benchmark: a bare FastAPI route that parses and echoes a body."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

app = FastAPI()


@app.post("/echo")
async def echo(request: Request) -> JSONResponse:
    """Parse the JSON body and answer with it: no validation, no geometry, no storage."""
    body: Any = json.loads(await request.body())
    return JSONResponse(body, status_code=202)
