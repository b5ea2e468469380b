"""Objects whose ``with`` / ``async with`` block ends by ``close()``: the one ``__exit__``.

A socket, a registry or a manager that owns a resource is used as ``with sock:`` or
``async with registry:``; leaving the block (normally or by an exception, which then
propagates) calls its ``close()``. The mixins here are that protocol once, so each owner only
writes its ``close()``.
"""

from __future__ import annotations

from typing import Self

__all__ = ["AsyncClosing", "Closing"]


class Closing:
    """Mixin: ``with x as y`` binds ``y = x`` and calls ``x.close()`` when the block ends."""

    __slots__ = ()

    def close(self) -> None:
        """Release what the object owns (the subclass's)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # The exception (if any) propagates: closing never swallows it.
        self.close()


class AsyncClosing:
    """Mixin: ``async with x as y`` binds ``y = x`` and calls ``x.close()`` (synchronous: it
    only drops channels and streams) when the block ends."""

    __slots__ = ()

    def close(self) -> None:
        """Release what the object owns (the subclass's)."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # The exception (if any) propagates: closing never swallows it.
        self.close()
