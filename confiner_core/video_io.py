"""Writing frames as they become final: an mp4 stream plus a contact sheet (OpenCV), and on request every frame
lossless (:class:`FramesFile`)."""

from __future__ import annotations

import os

import cv2
import numpy as np

from .outputs import write_failure, writing


class VideoSink:
    """Appends uint8 RGB frames [N, H, W, 3] to ``video.mp4`` and keeps only the frames the contact sheet needs,
    so memory does not grow with the video's length."""

    def __init__(self, path: str, fps: float, total_frames: int, sheet_frames: int = 8):
        if os.path.isdir(path) or not str(path).lower().endswith(".mp4"):   # (OpenCV printed an assertion dump,
            raise ValueError(f"VideoSink writes one .mp4 file: give its path, e.g. "   # then a free-space error)
                             f"{os.path.join(path, 'video.mp4') if os.path.isdir(path) else 'out/video.mp4'}, "
                             f"got {path!r}")
        self.path, self.fps, self.total = path, fps, total_frames
        self.sheet_index = set(np.linspace(0, max(total_frames - 1, 0), min(sheet_frames, total_frames)).round().astype(int))
        self.sheet: list[np.ndarray] = []
        self.sheet_numbers: list[int] = []   # each sheet frame's index in the video, drawn on it
        self.written = 0
        self._writer = None

    def write(self, frames: np.ndarray) -> None:
        for frame in frames:
            if self._writer is None:
                h, w = frame.shape[:2]
                self._writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
                if not self._writer.isOpened():
                    raise write_failure(self.path)
            self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            if self.written in self.sheet_index:
                self.sheet.append(frame.copy())
                self.sheet_numbers.append(self.written)
            self.written += 1

    def close(self, check: bool = True) -> None:
        """Finishes the file. OpenCV's writer reports no failure to write: a full disk leaves a file without its
        index (written last), which no player opens, so ``check`` reads the finished file's structure."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            if check and not mp4_complete(self.path):
                raise write_failure(self.path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(check=exc_type is None)   # a run that failed already says why


class FramesFile:
    """Every frame, uint8 RGB [F, H, W, 3], streamed into a NumPy ``.npy`` file as the frames become final:
    lossless where the mp4's codec moves pixels by tens of grey levels (two runs that differ by one level in a
    few pixels differed by up to 50 in video.mp4). ``numpy.load(path)`` reads it; ``evaluate`` reads it in
    place of video.mp4 when the run's report says it saved one."""

    def __init__(self, path: str, total_frames: int):
        self.path, self.total, self.written = path, total_frames, 0
        self.shape = None
        self._file = None

    def write(self, frames: np.ndarray) -> None:
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        with writing(self.path):
            if self._file is None:   # the header holds the whole shape: known with the first frames
                self.shape = (self.total, *frames.shape[1:])
                self._file = open(self.path, "wb")
                np.lib.format.write_array_header_1_0(self._file, {"descr": np.lib.format.dtype_to_descr(
                    frames.dtype), "fortran_order": False, "shape": self.shape})
            if frames.shape[1:] != self.shape[1:] or self.written + len(frames) > self.total:
                raise ValueError(f"{self.path}: frames {frames.shape} do not continue the video {self.shape} "
                                 f"after {self.written} frames")
            self._file.write(frames.tobytes())
        self.written += len(frames)

    def close(self, check: bool = True) -> None:
        if self._file is not None:
            with writing(self.path):
                self._file.close()
            self._file = None
        if check and self.written != self.total:
            raise ValueError(f"{self.path}: {self.written} of {self.total} frames were written")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(check=exc_type is None)


def mp4_complete(path: str) -> bool:
    """Whether the file is whole as an MP4 (ISO BMFF): its top-level boxes, read by their headers, end exactly at
    the end of the file, and one of them is the index ('moov')."""
    try:
        size = os.path.getsize(path)
        boxes = set()
        with open(path, "rb") as f:
            at = 0
            while at < size:
                f.seek(at)
                header = f.read(16)
                if len(header) < 8:
                    return False
                length, kind = int.from_bytes(header[:4], "big"), header[4:8]
                if length == 1 and len(header) == 16:   # a 64-bit size follows the type
                    length = int.from_bytes(header[8:16], "big")
                elif length == 0:                       # the box runs to the end of the file
                    length = size - at
                if length < 8:
                    return False
                boxes.add(kind)
                at += length
        return at == size and b"moov" in boxes
    except OSError:
        return False


def contact_sheet(frames: list, columns: int = 4, numbers: list | None = None) -> np.ndarray:
    """Frames tiled left to right, top to bottom, on a black canvas; with ``numbers``, each frame's number in its
    top-left corner, white on a black box (an outline alone was unreadable on light frames at 64 px: a trial)."""
    frames = list(frames)
    columns = min(columns, len(frames))   # a clip shorter than a row: no black tiles
    rows = -(-len(frames) // columns)
    h, w = frames[0].shape[:2]
    sheet = np.zeros((rows * h, columns * w, 3), np.uint8)
    scale = max(0.3, w / 320)
    for i, f in enumerate(frames):
        r, c = divmod(i, columns)
        tile = f
        if numbers is not None:
            tile = np.array(f, dtype=np.uint8, order="C")   # a copy: the caller's frame stays as it was
            label, pad, stroke = str(numbers[i]), max(1, round(3 * scale)), max(1, round(scale))
            (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, stroke)
            cv2.rectangle(tile, (0, 0), (tw + 2 * pad, th + base + 2 * pad), (0, 0, 0), cv2.FILLED)
            cv2.putText(tile, label, (pad, pad + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), stroke,
                        cv2.LINE_AA)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
    return sheet


def write_png(path: str, rgb: np.ndarray) -> None:
    """Encoded in memory and written by Python, so a failure to write is an OSError with its reason (OpenCV's own
    writer only returns False, and libpng prints to the terminal)."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode a {rgb.shape} image as PNG")
    with writing(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data.tobytes())
