"""Reading settings from environment variables: one parser for the server's and fine-tuning's settings,
each error naming the variable. Only the top layers (server, finetune, commands) read the environment."""

from __future__ import annotations

from icm_backend.errors import InputError

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def env_int(env, name: str, default: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise InputError(f"{name}={raw!r}: expected an integer") from None


def env_float(env, name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise InputError(f"{name}={raw!r}: expected a number") from None


def env_flag(env, name: str) -> bool:
    return str(env.get(name, "")).strip().lower() in _TRUE


def env_switch(env, name: str, default: bool) -> bool:
    """A switch that may be on by default: unset -> `default`; anything but 1/true/yes/on or 0/false/no/off is
    an error (env_flag reads a typo as "off", which is harmless only for switches that default to off)."""
    raw = str(env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE + _FALSE:
        return raw in _TRUE
    raise InputError(f"{name}={env.get(name)!r}: expected 1/true/on or 0/false/off")
