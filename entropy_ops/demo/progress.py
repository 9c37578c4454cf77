"""A dependency-free progress bar on stderr: ``label [#####.....] 12/40 suffix``, redrawn in place,
at most once per percent (so a log file does not fill with redraws).

Silent when ``enabled`` is False (tests) so output stays clean.
"""
import sys


class Progress:
    def __init__(self, total: int, label: str = "", width: int = 30, enabled: bool = True, stream=None):
        self.total, self.label, self.width, self.enabled = max(total, 1), label, width, enabled
        self.stream = stream or sys.stderr
        self.done, self._shown = 0, -1

    def update(self, n: int = 1, suffix: str = "") -> None:
        self.done = min(self.done + n, self.total)
        percent = 100 * self.done // self.total
        if not self.enabled or percent == self._shown:
            return
        self._shown = percent
        filled = self.width * self.done // self.total
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total} {suffix:<32}")
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()
