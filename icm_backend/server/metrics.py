"""Tiny Prometheus-text metrics (no client library needed for a handful of counters).

Label values are escaped as the text format requires (a crafted value cannot forge a line), and each
metric keeps at most `max_series` label sets: values past that count under the label value "other",
so clients inventing names cannot grow /metrics without bound.
"""

from __future__ import annotations

import re
import threading
from collections import defaultdict

_NAME = re.compile(r"[^a-zA-Z0-9_:]")
OTHER = "other"


def escape_label_value(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _series(name: str, labels: tuple) -> str:
    if not labels:
        return name
    lab = ",".join(f'{_NAME.sub("_", str(k))}="{escape_label_value(v)}"' for k, v in labels)
    return f"{name}{{{lab}}}"


class Metrics:
    def __init__(self, max_series: int = 200):
        self._lock = threading.Lock()
        self.max_series = max_series
        self.counters: dict[tuple[str, tuple], float] = defaultdict(float)
        self._per_name: dict[str, int] = defaultdict(int)

    def bounded_labels(self, name: str, labels: tuple) -> tuple:
        """`labels`, or the same keys with every value "other" once `name` holds max_series label sets."""
        key = (name, labels)
        if key in self.counters or self._per_name[name] < self.max_series:
            return labels
        return tuple((k, OTHER) for k, _ in labels)

    def inc(self, name: str, value: float = 1.0, **labels) -> None:
        with self._lock:
            lab = self.bounded_labels(name, tuple(sorted(labels.items())))
            if (name, lab) not in self.counters:
                self._per_name[name] += 1
            self.counters[(name, lab)] += value

    def render(self, gauges: dict[tuple[str, tuple], float] | None = None) -> str:
        lines = []
        with self._lock:
            items = list(self.counters.items())
        for (name, labels), value in sorted(items + list((gauges or {}).items()), key=lambda kv: (kv[0][0], str(kv[0][1]))):
            lines.append(f"{_series(name, labels)} {value:g}")
        return "\n".join(lines) + "\n"
