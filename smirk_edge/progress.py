"""A progress bar that uses tqdm when installed and a plain stderr counter otherwise."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int | None = None, desc: str = "", enabled: bool = True) -> Iterator[T]:
    """Iterate ``items`` showing progress on stderr (tqdm if available)."""
    if not enabled:
        yield from items
        return
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(items, total=total, desc=desc, unit="it", file=sys.stderr, dynamic_ncols=True)
        return
    last = 0.0
    n = 0
    for n, item in enumerate(items, 1):
        yield item
        now = time.monotonic()
        if now - last > 1.0 or (total is not None and n == total):
            last = now
            print(f"\r{desc} {n}/{total if total is not None else '?'}", end="", file=sys.stderr, flush=True)
    if n:
        print(file=sys.stderr)
