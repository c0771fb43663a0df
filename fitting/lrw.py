"""LRW videos and LRW-3D speech parameters: loaders and writers (no pipeline code).

**Videos** (LRW as distributed, docs/speech.md)::

    lipread_mp4/<WORD>/{train,val,test}/<WORD>_<id>.mp4    (29 frames, 25 fps, 256x256)
    lipread_mp4/<WORD>/{train,val,test}/<WORD>_<id>.txt    ("Text: WORD", "Duration: ..."; optional)
    lipread_mp4/<WORD>/{train,val,test}/<WORD>_<id>.landmarks.npy   (optional: float32 [F, 68, 2])

A video's id is its path below the root without the suffix, ``<WORD>/<split>/<WORD>_<id>``
(LRW restarts the numbering in every split, so ``<WORD>_<id>`` alone is not unique).  The
optional landmark sidecar holds every frame's 68 points in project pixels (u, v) with the
origin at the top-left pixel's corner (fitting/landmarks.py), e.g. the demo world's exact
projections; without it the stage detects the landmarks.  Decoding is PyAV (FFmpeg inside
the wheel; no system ffmpeg).

**Speech parameters** (LRW-3D, Tzirakis et al. 2019; its file layout is not public), one of:

- a *mirror tree*: ``<speech>/<WORD>/<split>/<WORD>_<id>.npy`` or ``.csv``, an array
  ``[frames, S]`` (CSV: comma- or white-space-separated, an optional non-numeric header line);
- one *HDF5* file whose dataset ``<WORD>/<split>/<WORD>_<id>`` (nested groups) or
  ``<WORD>_<id>`` (top level, when unique) is ``[frames, S]``;
- one *NPZ* with the same keys.

``S >= n`` (default 10) and the first ``n`` columns are used (LRW-3D orders its components
by significance).  A missing entry, a non-finite value, ``S < n`` or a frame count other
than the video's is a :class:`LrwReject`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

SPLITS = ("train", "val", "test")
VIDEO_SUFFIX = ".mp4"
LANDMARKS_SUFFIX = ".landmarks.npy"
SPEECH_SUFFIXES = (".npy", ".csv")
FPS = 25


class LrwReject(Exception):
    """One video cannot be used: ``reason`` (short, for rejects.jsonl) and ``detail``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class LrwInputError(ValueError):
    """The inputs as a whole are unusable (no videos, unreadable speech file)."""


# ---------------------------------------------------------------------------- videos
@dataclass
class LrwVideos:
    """``keys`` sorted video ids; ``paths[id]`` the .mp4; ``word[id]``, ``split[id]``."""

    root: str
    keys: list
    paths: dict
    word: dict = field(default_factory=dict)
    split: dict = field(default_factory=dict)


def video_root(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``path/lipread_mp4`` when that exists (the folder LRW unpacks to)."""
    p = Path(path)
    return p / "lipread_mp4" if (p / "lipread_mp4").is_dir() else p


def scan_videos(path: str | os.PathLike) -> LrwVideos:
    """Every ``<WORD>/<split>/<name>.mp4`` below the root (hidden entries skipped; files at
    other depths or in other split folders are ignored).  Raises :class:`LrwInputError`."""
    root = video_root(path)
    if not root.is_dir():
        raise LrwInputError(f"videos folder not found: {path}")
    paths, word, split = {}, {}, {}
    for wdir in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        for s in SPLITS:
            sdir = wdir / s
            if not sdir.is_dir():
                continue
            for f in sorted(sdir.iterdir()):
                if f.name.startswith(".") or not f.name.lower().endswith(VIDEO_SUFFIX) or not f.is_file():
                    continue
                vid = f"{wdir.name}/{s}/{f.name[:-len(VIDEO_SUFFIX)]}"
                paths[vid], word[vid], split[vid] = str(f), wdir.name, s
    if not paths:
        raise LrwInputError(f"no LRW videos (<WORD>/{{train,val,test}}/<name>.mp4) under {root}")
    return LrwVideos(root=str(root), keys=sorted(paths), paths=paths, word=word, split=split)


def read_video(path: str | os.PathLike, max_frames: int = 10_000) -> np.ndarray:
    """Decode every frame -> ``uint8 [F, H, W, 3]`` RGB (raises :class:`LrwReject`
    ``bad video`` for an unreadable, empty or corrupt file)."""
    import av

    frames = []
    try:
        with av.open(str(path), "r") as c:
            if not c.streams.video:
                raise LrwReject("bad video", f"{Path(path).name}: no video stream")
            stream = c.streams.video[0]
            stream.codec_context.options = {"err_detect": "explode"}   # damaged data fails, not concealed
            declared = int(stream.frames or 0)
            for frame in c.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) > max_frames:
                    raise LrwReject("bad video", f"{Path(path).name}: more than {max_frames} frames")
    except LrwReject:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError) as e:
        raise LrwReject("bad video", f"{Path(path).name}: {e.__class__.__name__}: {e}".splitlines()[0][:300]) from None
    if not frames:
        raise LrwReject("bad video", f"{Path(path).name}: no decodable frames")
    if declared and len(frames) != declared:
        raise LrwReject("bad video", f"{Path(path).name}: {len(frames)} frames decoded, the file declares {declared}")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise LrwReject("bad video", f"{Path(path).name}: frame sizes change within the video")
    return np.stack(frames)


def encode_video(frames: np.ndarray, fps: int = FPS, codec: str = "libx264", crf: int = 17) -> bytes:
    """``uint8 [F, H, W, 3]`` RGB -> the bytes of an H.264 (or ``mpeg4``) ``.mp4`` (yuv420p,
    one encoder thread so the bytes do not depend on the machine)."""
    import io

    import av

    frames = np.asarray(frames, np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be [F, H, W, 3] with F >= 1, got {frames.shape}")
    H, W = frames.shape[1:3]
    if H % 2 or W % 2:
        raise ValueError(f"yuv420p needs even frame sides, got {W}x{H}")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream(codec, rate=int(fps))
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        if codec == "libx264":     # threads on both layers: libavcodec's count is what x264 gets
            s.options = {"crf": str(int(crf)), "preset": "medium", "threads": "1",
                         "x264-params": "threads=1:lookahead-threads=1:sliced-threads=0"}
        else:
            s.options = {"qscale": "2", "threads": "1"}
        s.thread_count = 1
        for img in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return buf.getvalue()


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = FPS, codec: str = "libx264",
                crf: int = 17) -> None:
    """:func:`encode_video` written atomically to ``path``."""
    from pipeline.atomic import atomic_write_bytes

    atomic_write_bytes(path, encode_video(frames, fps=fps, codec=codec, crf=crf))


def word_txt(word: str, n_frames: int, fps: int = FPS) -> str:
    """The text of an LRW ``.txt`` beside a video (the fields LRW's files carry)."""
    return f"Text:  {word}\nConf:  1\n\nDuration: {n_frames / fps:.2f} seconds\n"


def read_word_txt(path: str | os.PathLike) -> dict:
    """``{"Text": ..., "Duration": ...}`` from an LRW ``.txt`` ({} when absent or unreadable)."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return {}
    out = {}
    for ln in lines:
        if ":" in ln:
            k, v = ln.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def landmarks_path(video_path: str | os.PathLike) -> Path:
    p = Path(video_path)
    return p.with_name(p.name[:-len(p.suffix)] + LANDMARKS_SUFFIX) if p.suffix else p.with_name(p.name + LANDMARKS_SUFFIX)


def read_video_landmarks(path: str | os.PathLike, n_frames: int) -> np.ndarray:
    """A landmark sidecar -> ``float64 [F, 68, 2]`` (raises :class:`LrwReject`)."""
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise LrwReject("bad landmarks", f"{Path(path).name}: {e}".splitlines()[0][:300]) from None
    if a.ndim != 3 or a.shape[1:] != (68, 2):
        raise LrwReject("bad landmarks", f"{Path(path).name}: shape {a.shape}, expected [frames, 68, 2]")
    if len(a) != n_frames:
        raise LrwReject("frame count mismatch", f"{Path(path).name}: {len(a)} landmark frames, video has {n_frames}")
    if not np.isfinite(a).all():
        raise LrwReject("bad landmarks", f"{Path(path).name}: non-finite coordinates")
    return a.astype(np.float64)


# ---------------------------------------------------------------------------- speech
def _read_csv(path: Path) -> np.ndarray:
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows = []
    for i, ln in enumerate(text):
        s = ln.strip()
        if not s:
            continue
        parts = [p for p in s.replace(",", " ").replace(";", " ").split()]
        try:
            rows.append([float(p) for p in parts])
        except ValueError:
            if i == 0 and not rows:
                continue                                   # a header line
            raise LrwReject("bad speech", f"{path.name}: line {i + 1} is not numeric") from None
    if not rows or len({len(r) for r in rows}) != 1:
        raise LrwReject("bad speech", f"{path.name}: empty or ragged rows")
    return np.asarray(rows, np.float64)


def check_speech(a, n: int, n_frames: Optional[int], where: str) -> np.ndarray:
    """Validate ``[frames, S]`` -> float32 ``[frames, n]`` (the first n columns)."""
    a = np.asarray(a)
    if a.dtype.kind not in "biuf" or a.ndim != 2:
        raise LrwReject("bad speech", f"{where}: shape {a.shape} ({a.dtype}), expected [frames, S] numbers")
    if a.shape[1] < n:
        raise LrwReject("bad speech", f"{where}: {a.shape[1]} parameters per frame, need >= {n}")
    a = a[:, :n].astype(np.float32)
    if not np.isfinite(a).all():
        raise LrwReject("bad speech", f"{where}: non-finite values")
    if n_frames is not None and len(a) != n_frames:
        raise LrwReject("frame count mismatch", f"{where}: {len(a)} speech frames, video has {n_frames}")
    return a


class SpeechSource:
    """LRW-3D speech parameters from a mirror tree, an HDF5 or an NPZ file (module doc).

    Picklable (a path and a kind); files are opened per call.  ``get(video_id, n_frames)``
    -> float32 ``[frames, n]`` or :class:`LrwReject`."""

    def __init__(self, path: str | os.PathLike, n: int = 10):
        p = Path(path)
        if p.is_dir():
            self.kind = "tree"
        elif p.is_file() and p.suffix.lower() in (".h5", ".hdf5"):
            self.kind = "h5"
        elif p.is_file() and p.suffix.lower() == ".npz":
            self.kind = "npz"
        elif p.exists():
            raise LrwInputError(f"speech source {path}: expected a folder, .h5/.hdf5 or .npz")
        else:
            raise LrwInputError(f"speech source not found: {path}")
        if int(n) < 1:
            raise LrwInputError(f"speech components must be >= 1, got {n}")
        self.path = str(p.absolute())
        self.n = int(n)
        if self.kind != "tree":
            self._names()                                  # refuse an unreadable file now

    def __repr__(self) -> str:
        return f"SpeechSource({self.kind}: {self.path}, n={self.n})"

    def _names(self) -> set:
        """Every array name in a single-file source (raises LrwInputError)."""
        try:
            if self.kind == "npz":
                with np.load(self.path, allow_pickle=False) as z:
                    return set(z.files)
            import h5py

            names = set()
            with h5py.File(self.path, "r") as f:
                f.visititems(lambda name, obj: names.add(name) if isinstance(obj, h5py.Dataset) else None)
            return names
        except (OSError, ValueError) as e:
            raise LrwInputError(f"cannot read speech file {self.path}: {e}".splitlines()[0]) from None

    @staticmethod
    def candidates(video_id: str) -> list[str]:
        """Names tried for a video, in order: the full id, then its basename."""
        base = video_id.rsplit("/", 1)[-1]
        return [video_id] if base == video_id else [video_id, base]

    def get(self, video_id: str, n_frames: Optional[int] = None) -> np.ndarray:
        if self.kind == "tree":
            for suf in SPEECH_SUFFIXES:
                f = Path(self.path) / (video_id + suf)
                if f.is_file():
                    try:
                        a = np.load(f, allow_pickle=False) if suf == ".npy" else _read_csv(f)
                    except LrwReject:
                        raise
                    except (OSError, ValueError) as e:
                        raise LrwReject("bad speech", f"{f.name}: {e}".splitlines()[0][:300]) from None
                    return check_speech(a, self.n, n_frames, f.name)
            raise LrwReject("no speech", f"no {video_id}.npy/.csv under {self.path}")
        names = self._names()
        for name in self.candidates(video_id):
            if name in names:
                if self.kind == "npz":
                    with np.load(self.path, allow_pickle=False) as z:
                        a = z[name]
                else:
                    import h5py

                    with h5py.File(self.path, "r") as f:
                        a = f[name][()]
                return check_speech(a, self.n, n_frames, f"{Path(self.path).name}:{name}")
        raise LrwReject("no speech", f"{video_id} not in {Path(self.path).name}")
