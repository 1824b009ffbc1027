"""Reading one flat config value into its field's type, and the checks every section uses;
each failure names the key."""

from __future__ import annotations

from typing import Any


def choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {allowed}, got {value!r}")


def positive(key: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{key} must be >= 1, got {value}")


def coerce(key: str, raw: Any, hint: Any) -> Any:
    """Turn a Flower scalar into the field's type, or raise naming the key."""
    try:
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0", "yes", "no"):
                return raw.lower() in ("true", "1", "yes")
            raise ValueError
        if hint is int:
            if isinstance(raw, bool):
                raise ValueError
            if isinstance(raw, int):
                return raw
            try:
                return int(str(raw).strip())  # exact, also for large seeds
            except ValueError:
                f = float(raw)  # "3.0" or 3.0 from a TOML float
                if not f.is_integer():
                    raise
                return int(f)
        if hint is float:
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if hint is str:
            return str(raw)
        if hint == tuple[int, ...]:
            if isinstance(raw, (list, tuple)):  # a TOML array
                return tuple(coerce(key, v, int) for v in raw)
            return parse_int_list(raw)
        if hint == tuple[float, ...]:
            if isinstance(raw, (list, tuple)):
                return tuple(coerce(key, v, float) for v in raw)
            if isinstance(raw, (int, float)) and not isinstance(raw, bool):
                return (float(raw),)
            return tuple(float(s) for s in str(raw).split(",") if s.strip())
        if hint == tuple[str, ...]:
            if isinstance(raw, (list, tuple)):
                return tuple(str(v).strip() for v in raw)
            return tuple(s.strip() for s in str(raw).split(",") if s.strip())
    except ValueError:
        raise ValueError(f"config key {key!r}: cannot read {raw!r} as {getattr(hint, '__name__', hint)}") from None
    raise TypeError(f"config key {key!r}: unsupported field type {hint}")


def parse_int_list(raw: Any) -> tuple[int, ...]:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return (raw,)
    out: list[int] = []
    for part in (p.strip() for p in str(raw).split(",") if p.strip()):
        lo, sep, hi = part.partition("-")
        out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    return tuple(out)
