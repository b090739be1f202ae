"""Tiny JSON-over-HTTP client with retries (stdlib only: no extra dependency)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from grpo.errors import EngineError


class HTTPStatusError(EngineError):
    """The server answered, with an error status: retrying will not help."""


def request_json(
    url: str,
    payload: dict | None = None,
    *,
    method: str | None = None,
    timeout: float = 600.0,
    retries: int = 4,
    backoff: float = 1.0,
    what: str = "vLLM server",
) -> object:
    """POST (payload given) or GET `url`; parsed JSON body (None when empty).

    Connection failures and timeouts are retried `retries` times with
    exponential backoff (1, 2, 4... s), then raise one EngineError saying what
    to check. An HTTP error status raises at once with the server's message.
    """
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json"})
    last: Exception | None = None
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read()
            return json.loads(body) if body.strip() else None
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            raise HTTPStatusError(f"{what} {url} answered HTTP {e.code}: {detail}") from e
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            last = e
            if attempt < retries:
                time.sleep(backoff * 2**attempt)
    reason = getattr(last, "reason", last)
    raise EngineError(
        f"{what} at {url} unreachable after {retries + 1} attempts ({type(last).__name__}: {reason}); "
        "check that it is running and the URL/port is right "
        "(a timeout may also mean it is overloaded: raise the timeout)."
    )
