"""Tiny Prometheus-text metrics (no client library needed for a handful of counters)."""

from __future__ import annotations

import threading
from collections import defaultdict


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.counters: dict[tuple[str, tuple], float] = defaultdict(float)

    def inc(self, name: str, value: float = 1.0, **labels) -> None:
        with self._lock:
            self.counters[(name, tuple(sorted(labels.items())))] += value

    def render(self, gauges: dict[tuple[str, tuple], float] | None = None) -> str:
        lines = []
        with self._lock:
            items = list(self.counters.items())
        for (name, labels), value in sorted(items + list((gauges or {}).items())):
            lab = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"{name}{{{lab}}} {value:g}" if lab else f"{name} {value:g}")
        return "\n".join(lines) + "\n"
