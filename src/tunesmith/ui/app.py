"""The `tunesmith ui` web app: runs, new runs, compare, report and chat over one static page.

`create_app(runs_dir, work_dir, token)` builds it. Every route that changes something is a POST; GETs only read.
Names from the browser are resolved by `tunesmith.ui.files` (inside the runs or working folder, or 403); library
errors become JSON `{"error": message}` with a 4xx status, so the page can show them as they are.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from tunesmith.errors import DataError, TunesmithError
from tunesmith.runs import RunPaths, is_run_folder, read_jsonl
from tunesmith.ui import files
from tunesmith.ui.chat import ChatRooms, sse
from tunesmith.ui.guard import BodyTooLarge, Guard, too_large
from tunesmith.ui.runs import ACTIVE, LOG_FILE, Launcher, MetricsTail, RunBusy, describe_run, log_tail

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
POLL_S = 0.5
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class NewRun(BaseModel):
    """The New run form."""

    model_config = ConfigDict(extra="forbid")
    data: str = Field(min_length=1)
    """A data file, relative to the working folder."""
    model: str | None = None
    method: Literal["full", "lora"] = "lora"
    epochs: float | None = Field(default=None, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    name: str | None = None
    settings: list[str] = []
    """More `KEY=VALUE` settings, as `--set` takes them."""


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=20_000)
    which: Literal["finetuned", "base"] = "finetuned"
    system: str | None = Field(default=None, max_length=20_000)
    reset: bool = False
    max_new_tokens: int = Field(default=256, gt=0, le=4096)


class UI:
    """What the routes share: the two folders, the training processes, the chat sessions."""

    def __init__(self, runs_dir: Path, work_dir: Path):
        self.runs_dir, self.work_dir = runs_dir, work_dir
        self.launcher, self.chats = Launcher(), ChatRooms()

    def run_root(self, name: str) -> Path:
        """The folder of an existing run (or one this UI is starting).

        Raises:
            HTTPException: 404 when there is no such run; OutsideFolder (403) for a name that escapes.
        """
        root = files.run_folder(self.runs_dir, name)
        if root.is_dir() and (is_run_folder(root) or root in self.launcher.processes or (root / LOG_FILE).is_file()):
            return root
        raise HTTPException(404, f"no run {name!r} in {self.runs_dir}")

    def run_names(self) -> list[str]:
        names = [p.name for p in self.runs_dir.iterdir() if p.is_dir() and is_run_folder(p)] \
            if self.runs_dir.is_dir() else []
        return names + [p.name for p in self.launcher.processes if p.name not in names]


def create_app(runs_dir: str | Path = "runs", work_dir: str | Path = ".", token: str | None = None,
               max_upload_bytes: int = MAX_UPLOAD_BYTES,
               allowed_hosts: frozenset[str] | None = LOOPBACK_HOSTS) -> FastAPI:
    """The UI over `runs_dir`, offering data files under `work_dir` (where training processes also run).

    `allowed_hosts`: the names the Host header may carry (default: this machine's loopback names, which keeps out
    pages reaching it through a DNS name of theirs); None accepts any (listening beyond loopback, with a token).
    """
    ui = UI(Path(runs_dir).resolve(), Path(work_dir).resolve())
    app = FastAPI(title="tunesmith ui", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ui = ui
    _add_error_handlers(app)
    _add_page_routes(app, ui)
    _add_run_routes(app, ui)
    _add_control_routes(app, ui)
    _add_report_routes(app, ui)
    _add_data_routes(app, ui, max_upload_bytes)
    _add_chat_routes(app, ui)
    app.add_middleware(Guard, token=token, max_upload_bytes=max_upload_bytes,
                       allowed_hosts=allowed_hosts)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(TunesmithError)
    async def library_error(request: Request, e: TunesmithError):
        status = 403 if isinstance(e, files.OutsideFolder) else 409 if isinstance(e, RunBusy) else 400
        return error(status, str(e))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return error(e.status_code, str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, e: RequestValidationError):
        problems = [f"{'.'.join(str(x) for x in p['loc'][1:]) or 'body'}: {p['msg']}" for p in e.errors()]
        return error(422, "; ".join(problems))

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, e: BodyTooLarge):
        return too_large(e.limit)


def _add_page_routes(app: FastAPI, ui: UI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/")
    def index():
        return FileResponse(STATIC / "index.html", headers={
            "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"})

    @app.get("/favicon.ico")
    def favicon():
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @app.get("/api/info")
    def info():
        from tunesmith.config import ModelConfig, TrainingConfig

        return {"runs_dir": str(ui.runs_dir), "work_dir": str(ui.work_dir), "default_model": ModelConfig().name,
                "default_epochs": TrainingConfig().epochs, "methods": ["lora", "full"]}


def _add_run_routes(app: FastAPI, ui: UI) -> None:
    from tunesmith import api

    @app.get("/api/runs")
    def list_runs():
        header, rows = api.list_runs(str(ui.runs_dir))
        cells = {row[0]: dict(zip(header, row)) for row in rows}
        runs = [{**describe_run(ui.runs_dir / name, ui.launcher), "cells": cells.get(name, {})}
                for name in ui.run_names()]
        return {"header": header, "runs": runs}

    @app.get("/api/runs/{name}")
    def show_run(name: str):
        root = ui.run_root(name)
        return {**describe_run(root, ui.launcher), "log_tail": log_tail(root, 40)}

    @app.get("/api/runs/{name}/metrics")
    def metrics(name: str):
        return read_jsonl(RunPaths(ui.run_root(name)).metrics)

    @app.get("/api/runs/{name}/events")
    async def events(name: str, request: Request):
        root = ui.run_root(name)
        return StreamingResponse(_run_events(root, ui.launcher, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _add_control_routes(app: FastAPI, ui: UI) -> None:
    @app.post("/api/runs")
    def start_run(body: NewRun):
        from tunesmith.ui.new_run import new_run_config

        root, config = new_run_config(ui.runs_dir, ui.work_dir, body)
        ui.launcher.start(root, config, ui.work_dir)
        return {"name": root.name, "config": str(config)}

    @app.post("/api/runs/{name}/stop")
    def stop_run(name: str):
        return {"name": name, "pid": ui.launcher.stop(ui.run_root(name)), "state": "stopping"}

    @app.post("/api/runs/{name}/resume")
    def resume_run(name: str):
        from tunesmith.ui.new_run import resume_config

        root = ui.run_root(name)
        config = resume_config(ui.runs_dir, root, ui.launcher)
        ui.chats.forget(root)
        ui.launcher.start(root, config, ui.work_dir, resume=True)
        return {"name": name, "config": str(config)}


def _add_report_routes(app: FastAPI, ui: UI) -> None:
    from tunesmith import api

    @app.post("/api/runs/{name}/report")
    def build_report(name: str):
        path = api.build_report(str(ui.run_root(name)))
        return {"name": name, "url": f"/runs/{name}/report.html", "path": str(path)}

    @app.get("/runs/{name}/report.html")
    def report(name: str):
        path = files.resolve_inside(ui.run_root(name), "report.html")
        if not path.is_file():
            raise HTTPException(404, f"{name} has no report yet: build it with the Report button")
        return FileResponse(path, media_type="text/html")

    @app.get("/api/compare")
    def compare(run: list[str] = Query(default=[])):
        roots = [ui.run_root(name) for name in run]
        header, rows = api.compare_runs([str(r) for r in roots]) if roots else ([], [])
        curves = {r.name: [[m["step"], m["loss"]] for m in read_jsonl(RunPaths(r).metrics) if "loss" in m]
                  for r in roots}
        return {"header": header, "rows": rows, "curves": curves}


async def _run_events(root: Path, launcher: Launcher, request: Request):
    """`status` whenever the run's state or progress changes, `metrics` with each batch of new metrics lines
    (`reset` first when a resume replaced the file), and `end` once the run is no longer training."""
    tail, last = MetricsTail(RunPaths(root).metrics), None
    yield "retry: 2000\n\n"
    while not await request.is_disconnected():
        lines, replaced = tail.read()
        if replaced:
            yield sse("reset", {})
        if lines:
            yield sse("metrics", lines)
        described = describe_run(root, launcher)
        if described != last:
            yield sse("status", described)
            last = described
        if described["state"] not in ACTIVE:
            lines, _ = tail.read()  # the status is written after the last metrics line: read once more
            if lines:
                yield sse("metrics", lines)
            yield sse("end", {"state": described["state"]})
            return
        await asyncio.sleep(POLL_S)


def _add_data_routes(app: FastAPI, ui: UI, max_upload_bytes: int) -> None:
    @app.get("/api/data")
    def data_files():
        return {"files": files.list_data_files(ui.work_dir, ui.runs_dir), "max_upload_bytes": max_upload_bytes}

    @app.get("/api/data/inspect")
    def inspect(path: str, model: str | None = None):
        from tunesmith import api
        from tunesmith.config import DataConfig, ModelConfig

        data = files.resolve_inside(ui.work_dir, path)
        if not data.is_file():
            raise DataError("no such file in the working folder", file=path)
        local = ui.work_dir / model if model else None
        model_config = ModelConfig(name=str(local) if local is not None and local.exists() else model) \
            if model else ModelConfig()
        result = api.inspect_data(str(data), DataConfig(on_error="skip"), model_config)
        summary = result.to_dict()
        summary["skipped_count"], summary["skipped"] = len(result.skipped), result.skipped[:20]
        return summary

    @app.post("/api/upload")
    async def upload(request: Request, name: str):
        target = files.upload_target(ui.work_dir, name)
        size, chunks = 0, []
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_upload_bytes:
                return too_large(max_upload_bytes)
            chunks.append(chunk)
        from tunesmith.runs import atomic_write_bytes

        atomic_write_bytes(target, b"".join(chunks))
        return {"path": str(target.relative_to(ui.work_dir)), "bytes": size}


def _add_chat_routes(app: FastAPI, ui: UI) -> None:
    @app.post("/api/runs/{name}/chat")
    def chat(name: str, body: ChatRequest):
        root = ui.run_root(name)
        return StreamingResponse(ui.chats.stream(root, body.which, body.text, body.system, body.reset,
                                                 body.max_new_tokens),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-store"})

