"""The slider editor's web app (FastAPI): one page, a small JSON API, per-tab sessions.

Routes (all JSON unless stated)::

    GET  /                      the page (workflows/web/index.html; static files under /static)
    GET  /api/info              parameter names, the seven expressions, photos to pick, limits
    POST /api/photo             multipart: sid, slot=main|transfer, file=<upload> | name=<photo>
                                (transfer: p_fit, p_regressed (D's head), p_reader (the reader))
    POST /api/edit              {"sid", "seq", "p": [E]} -> edited crop + 3D render
    GET  /api/state?sid=        what the server holds for a session (last parameters, photo)
    GET  /api/download?sid=&kind=crop|full    PNG of the last edit (crop, or pasted back)

Errors are ``{"error": "<one line>"}`` with a 4xx status (5xx for internal failures); a
failing request never takes the server down.  Each browser tab makes up a session id; the
server keeps the state of the ``max_sessions`` most recently used sessions (LRU).
"""
from __future__ import annotations

import base64
import logging
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from fitting.images import IMAGE_SUFFIXES
from pipeline.config import ConfigError
from workflows.editor.core import Editor, Face
from workflows.editor.fitbridge import read_landmarks_sidecar
from workflows.editor.imaging import MAX_BYTES, MAX_PIXELS, ImageInputError, decode_image, encode_png

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
PHOTO_SUFFIXES = set(IMAGE_SUFFIXES)   # the fit stage's
SID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
log = logging.getLogger("slidergan.serve")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Session:
    face: Face | None = None
    transfer: Face | None = None
    p: np.ndarray | None = None         # last parameters edited with, [E]
    edited: np.ndarray | None = None    # last edited crop, uint8 [S, S, 3]
    seq: int = -1
    lock: threading.Lock = field(default_factory=threading.Lock)


class SessionStore:
    """Per-tab state, least recently used evicted beyond ``capacity`` (thread-safe)."""

    def __init__(self, capacity: int = 32):
        self.capacity = int(capacity)
        self._d: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sid: str, create: bool = True) -> Session | None:
        if not isinstance(sid, str) or not SID_RE.match(sid):
            raise ApiError(400, "bad session id (the page makes one up: reload it)")
        with self._lock:
            s = self._d.get(sid)
            if s is None:
                if not create:
                    return None
                s = self._d[sid] = Session()
                while len(self._d) > self.capacity:
                    self._d.popitem(last=False)
            self._d.move_to_end(sid)
            return s

    def __len__(self) -> int:
        return len(self._d)


def list_photos(folder: Path | None, limit: int = 2000) -> list[str]:
    """Photos under ``folder`` (recursive), as sorted POSIX paths relative to it."""
    if folder is None or not folder.is_dir():
        return []
    out = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                 if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file())
    return out[:limit]


def data_url(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode("ascii")


def create_app(editor: Editor, photos: str | Path | None = None, *, max_bytes: int = MAX_BYTES,
               max_pixels: int = MAX_PIXELS, max_sessions: int = 32) -> FastAPI:
    """The FastAPI application serving ``editor`` (photos to pick from ``photos``)."""
    app = FastAPI(title="SliderGAN editor", docs_url=None, redoc_url=None, openapi_url=None)
    sessions = SessionStore(max_sessions)
    photo_dir = Path(photos).resolve() if photos else None
    app.state.editor, app.state.sessions, app.state.photo_dir = editor, sessions, photo_dir
    prototypes = editor.prototypes()
    render_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="render")
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):  # the server keeps serving
        log.exception("internal error on %s", request.url.path)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"},
                            status_code=500)

    @app.get("/")
    def index():
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    @app.get("/api/info")
    def info():
        return {"exp_names": editor.exp_names, "n_params": editor.n_params, "expressions": prototypes,
                "photos": list_photos(photo_dir), "image_size": editor.image_size,
                "render_size": editor.render_size, "max_bytes": max_bytes, "max_pixels": max_pixels,
                "variant": editor.variant, "step": editor.step, "has_regressor": editor.D is not None,
                "has_reader": editor.reader is not None, "regressors": editor.regressors}

    def _face_from_request(name: str | None, upload) -> Face:
        if upload is not None and getattr(upload, "filename", None) is not None:
            data = _read_upload(upload, max_bytes)
            image = decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels,
                                 name=Path(upload.filename or "upload").name or "upload")
            return editor.prepare(image, key=Path(upload.filename or "upload").name)
        if name:
            if photo_dir is None:
                raise ApiError(400, "this server has no photo folder (start it with --photos DIR)")
            if name not in set(list_photos(photo_dir)):
                raise ApiError(404, f"no photo named {name!r} in the photo folder")
            path = photo_dir / name
            with open(path, "rb") as f:
                data = f.read(max_bytes + 1)
            image = decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels, name=name)
            return editor.prepare(image, key=name, landmarks=read_landmarks_sidecar(path), domain=editor.domain_of(path))
        raise ApiError(400, "choose a photo: upload a file or pick one from the folder")

    @app.post("/api/photo")
    async def photo(request: Request):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_bytes + 65536:
            # refuse without parsing; drain (not store) a moderately large body so that the
            # client, still sending, gets to read the answer instead of a broken pipe
            if int(length) <= 8 * max_bytes:
                async for _ in request.stream():
                    pass
            raise ApiError(413, f"file too large ({int(length) / 1e6:.1f} MB; limit {max_bytes / 1e6:.0f} MB)")
        try:
            form = await request.form(max_files=1, max_fields=8, max_part_size=64 * 1024)
        except Exception as e:  # noqa: BLE001 — malformed multipart bodies
            raise ApiError(400, f"could not read the upload ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
        try:
            sid, slot = str(form.get("sid", "")), str(form.get("slot", "main"))
            upload = form.get("file")
            upload = upload if hasattr(upload, "read") else None
            name = form.get("name")
            name = str(name) if name else None
            session = sessions.get(sid)
            if slot not in ("main", "transfer"):
                raise ApiError(400, f"unknown slot {slot!r}")
            from starlette.concurrency import run_in_threadpool

            face = await run_in_threadpool(_face_from_request, name, upload)
            return await run_in_threadpool(_photo_response, session, slot, face)
        except (ImageInputError, ConfigError) as e:
            raise ApiError(422, str(e).splitlines()[0]) from None
        finally:
            await form.close()

    def _photo_response(session: Session, slot: str, face: Face) -> dict:
        common = {"key": face.key, "crop": data_url(face.crop), "p_fit": [round(float(x), 4) for x in face.p_exp],
                  "fit_error": face.fit_error, "landmarks": face.landmark_source,
                  "photo_size": [int(face.image.shape[1]), int(face.image.shape[0])],
                  "fit_ms": round(face.timings.get("fit_ms", 0.0), 1)}
        if slot == "transfer":
            p_d = editor.regress(face, "D").tolist() if editor.D is not None else None
            p_r = editor.regress(face, "reader").tolist() if editor.reader is not None else None
            with session.lock:
                session.transfer = face
            return {**common, "slot": "transfer",
                    "p_regressed": None if p_d is None else [round(float(x), 4) for x in p_d],
                    "p_reader": None if p_r is None else [round(float(x), 4) for x in p_r]}
        p = face.p_exp.copy()
        edited = editor.edit(face, p)
        render = editor.render_face(face, p)
        with session.lock:
            session.face, session.p, session.edited, session.seq = face, p, edited, -1
        return {**common, "slot": "main", "image": data_url(edited), "render": data_url(render)}

    @app.post("/api/edit")
    def edit(body: dict):
        sid = body.get("sid")
        session = sessions.get(sid)
        seq = body.get("seq", 0)
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise ApiError(400, "seq must be an integer")
        try:
            p = editor.check_params(body.get("p"))
        except ConfigError as e:
            raise ApiError(400, str(e)) from None
        face = session.face
        if face is None:
            raise ApiError(409, "load a photo first")
        if seq < session.seq:  # a newer edit already ran: answer without work
            return {"seq": seq, "stale": True}
        # the 3D render (numba, releases the GIL) runs beside G: the answer waits for the slower
        render_job = render_pool.submit(_timed, editor.render_face, face, p)
        edited, g_ms = _timed(editor.edit, face, p)
        render, r_ms = render_job.result()
        with session.lock:
            if session.face is face and seq >= session.seq:
                session.p, session.edited, session.seq = p, edited, seq
        t0 = time.perf_counter()
        img_url, render_url = data_url(edited), data_url(render)
        e_ms = (time.perf_counter() - t0) * 1e3
        return {"seq": seq, "p": [float(x) for x in p], "image": img_url, "render": render_url,
                "ms": {"generator": round(g_ms, 1), "render": round(r_ms, 1), "encode": round(e_ms, 1)}}

    @app.get("/api/state")
    def state(sid: str):
        s = sessions.get(sid, create=False)
        if s is None:
            return {"sid": sid, "photo": None, "p": None, "seq": None}
        return {"sid": sid, "photo": s.face.key if s.face else None, "seq": s.seq,
                "p": None if s.p is None else [float(x) for x in s.p],
                "transfer": s.transfer.key if s.transfer else None}

    @app.get("/api/download")
    def download(sid: str, kind: str = "crop"):
        s = sessions.get(sid, create=False)
        if s is None or s.face is None or s.edited is None:
            raise ApiError(409, "nothing to download yet: load a photo first")
        if kind not in ("crop", "full"):
            raise ApiError(400, "kind must be crop or full")
        img = s.edited if kind == "crop" else editor.paste(s.face, s.edited)
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(s.face.key).stem)[:80] or "photo"
        return Response(encode_png(img, compress_level=6), media_type="image/png",
                        headers={"Content-Disposition": f'attachment; filename="{stem}-edited-{kind}.png"'})

    return app


def _timed(fn, *args):
    """(fn(*args), milliseconds)."""
    t0 = time.perf_counter()
    out = fn(*args)
    return out, (time.perf_counter() - t0) * 1e3


def _read_upload(upload, max_bytes: int) -> bytes:
    """The upload's bytes, refusing more than ``max_bytes`` without reading it all."""
    f = upload.file
    f.seek(0)
    data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageInputError(f"{upload.filename or 'upload'}: file too large (limit {max_bytes / 1e6:.0f} MB)")
    return data


class ThreadedServer:
    """The app served by uvicorn in a background thread on ``host`` and a free port
    (benchmarks and tests; ``slidergan serve`` runs uvicorn in the foreground)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0):
        import socket

        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((host, port))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if time.time() - t0 > timeout or not self.thread.is_alive():
                self.stop()
                raise RuntimeError("editor server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
