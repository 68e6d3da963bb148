"""A web service whose in-memory state survives restarts and crashes.

Starlette under uvicorn. The state is a dict of named counters that lives in memory;
``asynccp.lifespan`` restores it at startup from the newest checkpoint that verifies,
saves it every ``--interval`` seconds while it changes, and once more on shutdown. The
request handlers hold no checkpoint code: they change the dict and report the change.

    pip install -e '.[examples]'
    python examples/service.py --location ./checkpoints/service --port 8000 &
    curl -X POST 'localhost:8000/incr/apples?by=3'   # {"name":"apples","value":3,"writes":1}
    curl localhost:8000/counts                       # {"apples":3}
    curl localhost:8000/status                       # what the autosave has done
    kill -TERM %1    # graceful stop: the state is saved once more on the way out
    python examples/service.py --location ./checkpoints/service --port 8000   # apples: 3

A SIGKILL (a crash, a lost machine) loses at most the writes of the last interval:
``GET /status`` reports ``writes_committed``, how many of the writes so far the newest
committed checkpoint holds. After SIGTERM the process ends the way uvicorn ends it: it
shuts down gracefully, then re-raises the signal (exit status 143 in a shell).

If saving keeps failing (``max_failures`` times in a row) the service stops, exit
code 1, rather than serve on with state it can no longer keep; shorter store outages
are logged and ridden out. ``--no-autosave`` serves the same routes from memory only
(the benchmark's baseline).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import asynccp

State = dict[str, Any]  # {"counts": {name: int}, "writes": int}


def fresh() -> State:
    """The state of a service that has never run."""
    return {"counts": {}, "writes": 0}


async def restore(ckpt: asynccp.Checkpoint) -> State:
    """The state in a checkpoint (the read is verified against its checksum)."""
    return json.loads(await ckpt.read())  # type: ignore[no-any-return]


def dump(state: State) -> bytes:
    """The state as one JSON file.

    Unchanged state gives the same bytes (dicts keep their order, through a JSON round
    trip too), so the autosave skips it. Not sorted: on the event loop, sorting 5000
    keys costs more than the rest of the encoding.
    """
    return json.dumps(state, separators=(",", ":")).encode()


class InMemory:
    """``--no-autosave``: the same shape as ``asynccp.ServiceState``, kept nowhere."""

    def __init__(self) -> None:
        self.value = fresh()
        self.checkpoint = None

    def changed(self, n: int = 1) -> None:
        pass


def make_app(location: str | None, interval: float, flush_timeout: float) -> Starlette:
    """The service; ``location`` None keeps the state in memory only."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        if location is None:
            yield {"kept": InMemory(), "base_writes": 0}
            return
        try:
            async with asynccp.lifespan(
                location,
                restore=restore,
                initial=fresh,
                dump=dump,
                every=interval,
                flush_timeout=flush_timeout,  # bounds the save on shutdown
            ) as kept:
                yield {"kept": kept, "base_writes": kept.value["writes"]}
        except asynccp.AutosaveError:
            # uvicorn logs a lifespan that fails after startup, then goes on serving.
            # This service stops instead: its state can no longer be kept.
            app.state.failed = True
            app.state.server.should_exit = True
            raise

    async def incr(request: Request) -> JSONResponse:
        try:
            by = int(request.query_params.get("by", "1"))
        except ValueError:
            return JSONResponse({"error": "by must be an integer"}, status_code=400)
        kept = request.state.kept
        name = request.path_params["name"]
        counts = kept.value["counts"]
        counts[name] = counts.get(name, 0) + by
        kept.value["writes"] += 1
        kept.changed()  # the autosave's change count: nothing else to do here
        return JSONResponse({"name": name, "value": counts[name], "writes": kept.value["writes"]})

    async def counts(request: Request) -> JSONResponse:
        return JSONResponse(request.state.kept.value["counts"])

    async def status(request: Request) -> JSONResponse:
        kept = request.state.kept
        doc: dict[str, Any] = {
            "writes": kept.value["writes"],
            "restored_step": None if kept.checkpoint is None else kept.checkpoint.step,
        }
        if isinstance(kept, asynccp.ServiceState):
            stats = kept.autosave.stats
            doc.update(
                # One change is reported per write, so this many writes are in the store.
                writes_committed=request.state.base_writes + stats.changes_committed,
                saves=stats.saves,
                skips=stats.skips,
                failures=stats.failures,
                consecutive_failures=stats.consecutive_failures,
                last_step=stats.last_step,
            )
        return JSONResponse(doc)

    app = Starlette(
        routes=[
            Route("/incr/{name}", incr, methods=["POST"]),
            Route("/counts", counts),
            Route("/status", status),
        ],
        lifespan=lifespan,
    )
    app.state.failed = False
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--location", default="./checkpoints/service")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between saves")
    parser.add_argument("--flush-timeout", type=float, default=20.0)
    parser.add_argument("--no-autosave", action="store_true", help="keep the state in memory only")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    # asynccp logs on the "asynccp" logger and prints nothing itself: show its INFO lines
    # (restored / starting fresh) and its warnings (failed saves, with tracebacks).
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("asynccp").addHandler(handler)
    logging.getLogger("asynccp").setLevel(logging.INFO)

    location = None if args.no_autosave else args.location
    app = make_app(location, args.interval, args.flush_timeout)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    app.state.server = server
    server.run()
    if not server.started:
        return 3  # the startup failed (uvicorn's own code for it)
    return 1 if app.state.failed else 0


if __name__ == "__main__":
    sys.exit(main())
