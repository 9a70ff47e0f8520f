"""``Client`` (blocking) and ``AsyncClient`` (asyncio): the same methods over the relay's
registration API (``/v1``), on httpx."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import httpx

from clip_relay_client._core import (
    DEFAULT_TIMEOUT,
    MAX_PAGE,
    Call,
    Core,
    create_call,
    list_call,
    recover_answer,
    recover_call,
    watch_path,
)
from clip_relay_client._errors import ConnectionFailed
from clip_relay_client.models import Delivery, SecretRotation, Watch, WatchPage, WatchStatus

__all__ = ["AsyncClient", "Client"]


class Client:
    """The relay's API for one API key (one tenant).

    ``Client("https://relay.example.com", "key")``; retries with backoff on connection
    errors and on 429/503 (honouring ``Retry-After``) for calls that are safe to repeat
    (reads, cancel, recover, and ``create_watch`` with an ``idempotency_key``), waiting at
    most *max_wait* seconds (an answer asking for longer raises at once); *timeout*
    seconds per request (or an ``httpx.Timeout``; None: none). API errors raise
    :class:`~clip_relay_client.ApiError`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_wait: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._core = Core(
            base_url,
            api_key,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_wait=max_wait,
        )
        self._http = httpx.Client(
            headers=self._core.headers, timeout=self._core.timeout, transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def _send(self, call: Call) -> Any:
        method, url, headers, body = self._core.request(call)
        tries = 0
        while True:
            tries += 1
            response: httpx.Response | None = None
            try:
                response = self._http.request(
                    method, url, params=call.params or None, headers=headers, content=body
                )
            except httpx.TransportError as exc:
                wait = self._core.wait_before_retry(call, tries, None, exc)
                if wait is None:
                    shown = self._core.shown_base + call.path  # (no password)
                    raise ConnectionFailed(
                        f"{method} {shown}: {type(exc).__name__}: {exc}"
                    ) from exc
            else:
                wait = self._core.wait_before_retry(call, tries, response, None)
                if wait is None:
                    return self._core.read(response)
            time.sleep(wait)

    def create_watch(
        self,
        *,
        video_id: str,
        callback_url: str,
        min_score: float | None = None,
        max_score: float | None = None,
        favorited_only: bool | None = None,
        sort_by: str | None = None,
        sort_order: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        secret: str | None = None,
        idempotency_key: str | None = None,
    ) -> Watch:
        """Register a watch; the result carries its ``secret`` (only ever returned here, and
        again for a replay of the same ``idempotency_key``)."""
        call = create_call(
            video_id=video_id,
            callback_url=callback_url,
            min_score=min_score,
            max_score=max_score,
            favorited_only=favorited_only,
            sort_by=sort_by,
            sort_order=sort_order,
            metadata=metadata,
            secret=secret,
            idempotency_key=idempotency_key,
        )
        return Watch.from_json(self._send(call))

    def get_watch(self, watch_id: str) -> Watch:
        """One watch."""
        return Watch.from_json(self._send(Call("GET", watch_path(watch_id), retry=True)))

    def list_watches(
        self,
        video_id: str | None = None,
        status: WatchStatus | None = None,
        page_size: int = 50,
        cursor: str | None = None,
    ) -> Iterator[Watch]:
        """The tenant's watches, newest first (from *cursor*: where a page ended), following
        ``nextCursor`` page by page, *page_size* a page (at most the API's 100)."""
        page_size = min(page_size, MAX_PAGE)
        while True:
            page = self.list_watches_page(video_id, status, page_size, cursor)
            yield from page.data
            cursor = page.next_cursor
            if not cursor:
                return

    def list_watches_page(
        self,
        video_id: str | None = None,
        status: WatchStatus | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> WatchPage:
        """One page of the tenant's watches (at most *limit*, newest first) and the cursor
        of the next; *cursor* is a ``next_cursor`` an earlier page gave."""
        return WatchPage.from_json(self._send(list_call(video_id, status, limit, cursor)))

    def cancel_watch(self, watch_id: str) -> None:
        """Cancel: nothing is delivered afterwards."""
        self._send(Call("DELETE", watch_path(watch_id), retry=True))

    def deliveries(self, watch_id: str) -> list[Delivery]:
        """A watch's recorded delivery attempts, oldest first: the last 200 of its events
        and the last 200 pings."""
        doc = self._send(Call("GET", watch_path(watch_id, "deliveries"), retry=True))
        return [Delivery.from_json(d) for d in doc["data"]]

    def redeliver(self, watch_id: str) -> Watch:
        """Send the watch's last event again (same ``webhook-id``)."""
        return Watch.from_json(
            self._send(Call("POST", watch_path(watch_id, "redeliver"), retry=False))
        )

    def rotate_secret(self, watch_id: str) -> SecretRotation:
        """A new webhook secret; the old one keeps signing for the relay's grace period."""
        doc = self._send(Call("POST", watch_path(watch_id, "rotate-secret"), retry=False))
        return SecretRotation.from_json(doc)

    def ping(self, watch_id: str) -> None:
        """Have the relay send the watch's receiver one signed ``watch.ping`` event."""
        self._send(Call("POST", watch_path(watch_id, "ping"), retry=False))

    def recover(self, since: datetime | str, until: datetime | str | None = None) -> int:
        """Put every watch that became ``failed`` in [since, until) back to delivering its
        last event; the number of watches put back. A range too large for one request
        (the answer says ``more``) is sent again, ending where the first ended, until it is
        done."""
        total = 0
        while True:
            count, again = recover_answer(self._send(recover_call(since, until)))
            total += count
            if again is None:
                return total
            until = again


class AsyncClient:
    """:class:`Client` for asyncio: the same methods, awaited (``list_watches`` is an async
    iterator)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_wait: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._core = Core(
            base_url,
            api_key,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_wait=max_wait,
        )
        self._http = httpx.AsyncClient(
            headers=self._core.headers, timeout=self._core.timeout, transport=transport
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def _send(self, call: Call) -> Any:
        method, url, headers, body = self._core.request(call)
        tries = 0
        while True:
            tries += 1
            try:
                response = await self._http.request(
                    method, url, params=call.params or None, headers=headers, content=body
                )
            except httpx.TransportError as exc:
                wait = self._core.wait_before_retry(call, tries, None, exc)
                if wait is None:
                    shown = self._core.shown_base + call.path  # (no password)
                    raise ConnectionFailed(
                        f"{method} {shown}: {type(exc).__name__}: {exc}"
                    ) from exc
            else:
                wait = self._core.wait_before_retry(call, tries, response, None)
                if wait is None:
                    return self._core.read(response)
            await asyncio.sleep(wait)

    async def create_watch(
        self,
        *,
        video_id: str,
        callback_url: str,
        min_score: float | None = None,
        max_score: float | None = None,
        favorited_only: bool | None = None,
        sort_by: str | None = None,
        sort_order: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        secret: str | None = None,
        idempotency_key: str | None = None,
    ) -> Watch:
        """See :meth:`Client.create_watch`."""
        call = create_call(
            video_id=video_id,
            callback_url=callback_url,
            min_score=min_score,
            max_score=max_score,
            favorited_only=favorited_only,
            sort_by=sort_by,
            sort_order=sort_order,
            metadata=metadata,
            secret=secret,
            idempotency_key=idempotency_key,
        )
        return Watch.from_json(await self._send(call))

    async def get_watch(self, watch_id: str) -> Watch:
        """One watch."""
        return Watch.from_json(await self._send(Call("GET", watch_path(watch_id), retry=True)))

    async def list_watches(
        self,
        video_id: str | None = None,
        status: WatchStatus | None = None,
        page_size: int = 50,
        cursor: str | None = None,
    ) -> AsyncIterator[Watch]:
        """The tenant's watches, newest first (from *cursor*: where a page ended), following
        ``nextCursor`` page by page, *page_size* a page (at most the API's 100)."""
        page_size = min(page_size, MAX_PAGE)
        while True:
            page = await self.list_watches_page(video_id, status, page_size, cursor)
            for watch in page.data:
                yield watch
            cursor = page.next_cursor
            if not cursor:
                return

    async def list_watches_page(
        self,
        video_id: str | None = None,
        status: WatchStatus | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> WatchPage:
        """One page of the tenant's watches (at most *limit*, newest first) and the cursor
        of the next; *cursor* is a ``next_cursor`` an earlier page gave."""
        return WatchPage.from_json(await self._send(list_call(video_id, status, limit, cursor)))

    async def cancel_watch(self, watch_id: str) -> None:
        """Cancel: nothing is delivered afterwards."""
        await self._send(Call("DELETE", watch_path(watch_id), retry=True))

    async def deliveries(self, watch_id: str) -> list[Delivery]:
        """A watch's recorded delivery attempts, oldest first: the last 200 of its events
        and the last 200 pings."""
        doc = await self._send(Call("GET", watch_path(watch_id, "deliveries"), retry=True))
        return [Delivery.from_json(d) for d in doc["data"]]

    async def redeliver(self, watch_id: str) -> Watch:
        """Send the watch's last event again (same ``webhook-id``)."""
        doc = await self._send(Call("POST", watch_path(watch_id, "redeliver"), retry=False))
        return Watch.from_json(doc)

    async def rotate_secret(self, watch_id: str) -> SecretRotation:
        """A new webhook secret; the old one keeps signing for the relay's grace period."""
        doc = await self._send(Call("POST", watch_path(watch_id, "rotate-secret"), retry=False))
        return SecretRotation.from_json(doc)

    async def ping(self, watch_id: str) -> None:
        """Have the relay send the watch's receiver one signed ``watch.ping`` event."""
        await self._send(Call("POST", watch_path(watch_id, "ping"), retry=False))

    async def recover(self, since: datetime | str, until: datetime | str | None = None) -> int:
        """See :meth:`Client.recover`."""
        total = 0
        while True:
            count, again = recover_answer(await self._send(recover_call(since, until)))
            total += count
            if again is None:
                return total
            until = again
