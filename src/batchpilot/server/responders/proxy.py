"""A responder that forwards each request to an OpenAI-compatible upstream over HTTP."""

from __future__ import annotations

from typing import Any

import httpx

from batchpilot.server.responders.base import ResponderError

__all__ = ["ProxyResponder"]

JSON = dict[str, Any]

_MAX_TEXT = 500
_DROPPED_KEYS = ("stream", "stream_options")


class ProxyResponder:
    """Forwards chat-completion, embeddings and moderations bodies to
    `{upstream}/chat/completions`, `{upstream}/embeddings` and `{upstream}/moderations`, where
    `upstream` is a base URL such as `http://127.0.0.1:8080/v1`.

    `stream` is removed from forwarded bodies: the upstream always answers with one object.
    Upstream errors keep their status and, when the body is an OpenAI error envelope, its
    message, type, param and code. An unreachable upstream or a timeout is a 502 `server_error`.
    One pooled httpx client serves all threads; a client passed in is not closed by `close()`.
    """

    name = "proxy"

    def __init__(
        self,
        upstream: str,
        *,
        api_key: str | None = None,
        timeout: float = 600.0,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._headers = headers
        self._timeout = httpx.Timeout(timeout)
        self._owns_client = http_client is None
        self._client = http_client if http_client is not None else httpx.Client()

    def __repr__(self) -> str:
        return f"ProxyResponder(upstream={self.upstream!r})"

    def chat(self, body: JSON) -> JSON:
        return self._post("chat/completions", body)

    def embed(self, body: JSON) -> JSON:
        return self._post("embeddings", body)

    def moderate(self, body: JSON) -> JSON:
        return self._post("moderations", body)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def _post(self, path: str, body: JSON) -> JSON:
        url = f"{self.upstream}/{path}"
        forwarded = {key: value for key, value in body.items() if key not in _DROPPED_KEYS}
        try:
            response = self._client.post(
                url, json=forwarded, headers=self._headers, timeout=self._timeout
            )
        except httpx.TimeoutException as exc:
            raise ResponderError(
                f"Upstream {url} did not answer in time ({type(exc).__name__}).",
                status_code=502,
                type="server_error",
            ) from None
        except httpx.HTTPError as exc:
            raise ResponderError(
                f"Could not reach upstream {url}: {type(exc).__name__}: {exc}",
                status_code=502,
                type="server_error",
            ) from None
        if not response.is_success:
            raise _upstream_error(url, response)
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise ResponderError(
                f"Upstream {url} answered {response.status_code} without a JSON object: "
                f"{_truncate(response.text)}",
                status_code=502,
                type="server_error",
            )
        return payload


def _upstream_error(url: str, response: httpx.Response) -> ResponderError:
    status = response.status_code
    if not 400 <= status <= 599:
        return ResponderError(
            f"Upstream {url} answered with unexpected status {status}.",
            status_code=502,
            type="server_error",
        )
    default_type = "server_error" if status >= 500 else "invalid_request_error"
    try:
        payload = response.json()
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return ResponderError(
            str(error["message"]),
            status_code=status,
            type=str(error.get("type") or default_type),
            code=_optional_str(error.get("code")),
            param=_optional_str(error.get("param")),
        )
    text = _truncate(response.text) or response.reason_phrase
    return ResponderError(
        f"Upstream {url} answered {status}: {text}",
        status_code=status,
        type=default_type,
    )


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _truncate(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _MAX_TEXT else f"{text[:_MAX_TEXT]}..."
