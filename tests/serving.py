"""A long-running command of the test's own (``relay``, ``worker``), stopped as its
operator stops it: SIGTERM, then it must exit 0 having said what it did on stderr.

``Serving`` starts the process with its stderr collected line by line by a thread (so a
test can wait for "relaying ..." while the process runs), and on the way out, also when
the test fails, sends SIGTERM, waits for the exit (killing it only past ``timeout``) and
closes the pipe. Only the process it started is ever signalled.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["Serving"]


class Serving:
    def __init__(
        self, command: Sequence[str], *, env: Mapping[str, str], cwd: Path | None = None
    ) -> None:
        self.command = list(command)
        self._env = dict(env)
        self._cwd = cwd
        self.lines: list[str] = []
        self.returncode: int | None = None
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def __enter__(self) -> Self:
        process = subprocess.Popen(
            self.command, cwd=self._cwd, env=self._env, stderr=subprocess.PIPE, text=True
        )
        self._process = process
        stream = process.stderr
        assert stream is not None

        def read() -> None:
            with stream:
                for line in stream:
                    self.lines.append(line)

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        return self

    def wait_for(self, text: str, timeout: float = 60) -> None:
        """Until the process said ``text`` on stderr; fails if it exits first."""
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self._process.poll() is None, f"exited before saying {text!r}:\n{self.stderr}"
            assert time.monotonic() < deadline, f"never said {text!r}:\n{self.stderr}"
            time.sleep(0.05)

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, and its exit status (killed past ``timeout``)."""
        process = self._process
        assert process is not None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if self._reader is not None:
            self._reader.join(timeout=10)
        self.returncode = process.returncode
        return process.returncode

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.returncode is None:
            self.stop()
