"""A real HTTP MJPEG stream on 127.0.0.1 for tests: ``multipart/x-mixed-replace`` JPEG frames."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import cv2
import numpy as np

BOUNDARY = "smirkedgeframe"


class MjpegServer:
    """Serves ``frame(i)`` (BGR uint8) as ``/stream.mjpg`` at ``fps`` until ``frames`` were sent or
    the server is stopped. ``url`` is the stream's address; use as a context manager."""

    def __init__(self, frame: Callable[[int], np.ndarray], frames: int = 10_000, fps: float = 25.0):
        self.sent = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                if self.path != "/stream.mjpg":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.end_headers()
                try:
                    for i in range(frames):
                        if server._stop.is_set():
                            break
                        ok, jpg = cv2.imencode(".jpg", frame(i), [cv2.IMWRITE_JPEG_QUALITY, 90])
                        data = jpg.tobytes()
                        self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                         f"Content-Length: {len(data)}\r\n\r\n".encode() + data + b"\r\n")
                        self.wfile.flush()
                        server.sent += 1
                        server._stop.wait(1.0 / fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._stop = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/stream.mjpg"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "MjpegServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
