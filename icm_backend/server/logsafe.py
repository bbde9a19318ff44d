"""Log fields from clients cannot forge log lines: control characters in a record's arguments are escaped.

Installed once by create_app as a LogRecord factory, so it covers every `log.x("... %s", value)` in the
process (ours and the libraries'). Messages themselves are our own constants; tracebacks (exc_info) are
left multi-line on purpose.
"""

from __future__ import annotations

import logging
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")
_installed = False


def escape_log_value(value: str) -> str:
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), value)


def _safe(arg):
    if isinstance(arg, str):
        return escape_log_value(arg)
    if isinstance(arg, BaseException):
        return escape_log_value(str(arg))
    return arg


def install_log_escaping() -> None:
    global _installed
    if _installed:
        return
    base = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = base(*args, **kwargs)
        if isinstance(record.args, tuple):
            record.args = tuple(_safe(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _safe(v) for k, v in record.args.items()}
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
