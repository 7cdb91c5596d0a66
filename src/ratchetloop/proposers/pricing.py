"""What a proposal cost, in USD: the experiment's `prices` override first, then the
maintained `genai-prices` table; an unknown price is None ("unknown"), never $0.

Token convention (all backends): `prompt_tokens` is the whole prompt, *including* cached
reads and cache writes; `cached_prompt_tokens` and `cache_write_tokens` are the parts of it
billed at the cache rates. Override entries are USD per million tokens:
{"input", "output", "cached_input" (default: input), "cache_write" (default: input)}.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

from .base import Usage


def _override(
    names: Iterable[str], overrides: Mapping[str, Mapping[str, float]]
) -> Mapping[str, float] | None:
    for name in names:
        if name and name in overrides:
            return overrides[name]
    return None


def cost_from_table(usage: Usage, table: Mapping[str, float]) -> float:
    """Price `usage` with one override entry (USD per million tokens)."""
    input_price = float(table.get("input", 0.0))
    cached = float(table.get("cached_input", input_price))
    write = float(table.get("cache_write", input_price))
    uncached = max(0, usage.prompt_tokens - usage.cached_prompt_tokens - usage.cache_write_tokens)
    total = (
        uncached * input_price
        + usage.cached_prompt_tokens * cached
        + usage.cache_write_tokens * write
        + usage.completion_tokens * float(table.get("output", 0.0))
    )
    return total / 1_000_000


def lookup_cost(usage: Usage, model: str, provider_id: str | None = None) -> float | None:
    """genai-prices' figure for `model`, or None when the table does not know it."""
    try:
        from genai_prices import Usage as PriceUsage
        from genai_prices import calc_price
    except ImportError:  # pragma: no cover - it is a declared dependency
        return None
    price_usage = PriceUsage(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        cache_read_tokens=usage.cached_prompt_tokens,
        cache_write_tokens=usage.cache_write_tokens,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            calc = calc_price(price_usage, model, provider_id=provider_id)
    except LookupError:
        return None
    except Exception:  # noqa: BLE001 - a price table problem must never stop a run
        return None
    return float(calc.total_price)


def price(
    usage: Usage,
    model: str,
    *,
    overrides: Mapping[str, Mapping[str, float]] | None = None,
    aliases: Iterable[str] = (),
    provider_id: str | None = None,
    local: bool = False,
) -> float | None:
    """Cost of `usage`: override (by model or any alias, e.g. the full --model string),
    else 0 for local servers, else genai-prices, else None (unknown)."""
    table = _override([*aliases, model], overrides or {})
    if table is not None:
        return cost_from_table(usage, table)
    if local:
        return 0.0
    return lookup_cost(usage, model, provider_id)
