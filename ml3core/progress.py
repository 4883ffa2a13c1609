"""A one-line progress bar on stderr, shared by the CLI and the client (stdlib only: the client's
users install httpx and nothing else)."""

from __future__ import annotations

import os
import sys
import time

RED, GREEN = "31", "32"  # ANSI colours: a horizon where the learned loss loses is red


def colours(stream):
    """paint(text, colour): ANSI colour on a terminal (not with NO_COLOR set), the text unchanged otherwise."""
    on = stream.isatty() and not os.environ.get("NO_COLOR")
    return lambda text, code: f"\033[{code}m{text}\033[0m" if on else text


class Progress:
    """A one-line progress bar on stderr (quiet when not a terminal: a line every 5 s).

    Call it with (done, total[, metrics]); ``phase=`` names the phase of a run with several
    (meta-train, meta-test, report): a new phase starts a new line and a new clock."""

    def __init__(self, label: str, stream=None):
        self.label, self.stream, self.start = label, stream or sys.stderr, time.time()
        self.tty = self.stream.isatty()
        self._last_line = 0.0
        self.phase = None
        self._open = False  # a terminal line ends with \r and awaits its next update

    def __call__(self, done: int, total: int, metrics: dict | None = None, phase: str | None = None):
        now = time.time()
        if phase != self.phase:
            if self._open:
                self.stream.write("\n")
            self.phase, self.start, self._last_line, self._open = phase, now, 0.0, False
        if not self.tty and done < total and now - self._last_line < 5:
            return
        self._last_line = now
        label = " ".join(p for p in (self.label, phase) if p)
        frac = min(1.0, done / total) if total else 1.0
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        extra = ""
        if metrics:
            shown = [f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float) and k != "iteration"][:3]
            extra = " " + " ".join(shown)
        self._open = self.tty and done < total
        end = "\r" if self._open else "\n"
        self.stream.write(f"{label} [{bar}] {done}/{total} {now - self.start:.0f}s{extra}\033[K{end}"
                          if self.tty else f"{label} {done}/{total} {now - self.start:.0f}s{extra}{end}")
        self.stream.flush()
