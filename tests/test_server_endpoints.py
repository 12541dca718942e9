"""The other endpoints the Batch API accepts, legacy completions, moderations, image
generations and edits and videos, in real time and in batches, through the official SDK."""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from batchpilot.server import LocalServer
from test_server_openapi import check

from helpers import by_custom_id, client_for, read_jsonl, submit, wait_for


def line(custom_id: str, url: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def test_completions_in_real_time(local_server: LocalServer) -> None:
    client = client_for(local_server)
    answer = client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt=["Say hi", "Say bye"], max_tokens=3
    )
    assert answer.object == "text_completion"
    assert [c.index for c in answer.choices] == [0, 1]
    assert all(c.text and c.finish_reason == "length" for c in answer.choices)
    assert answer.usage is not None and answer.usage.completion_tokens <= 6
    check("CreateCompletionResponse", answer.model_dump(exclude_none=False))


def test_moderations_in_real_time(local_server: LocalServer) -> None:
    client = client_for(local_server)
    result = client.moderations.create(input=["a kind word", "[flag] a cruel one"])
    assert result.model == "omni-moderation-latest"
    assert [r.flagged for r in result.results] == [False, True]
    assert result.results[0].category_scores.violence < 0.5
    check("CreateModerationResponse", result.model_dump(exclude_none=False, by_alias=True))


def test_image_generations_in_real_time(local_server: LocalServer) -> None:
    result = client_for(local_server).images.generate(
        model="gpt-image-1", prompt="a red kite", size="1536x1024", n=2, quality="low"
    )
    assert result.data is not None and len(result.data) == 2
    png = base64.b64decode(result.data[0].b64_json or "")
    assert png.startswith(b"\x89PNG") and struct.unpack(">II", png[16:24]) == (1536, 1024)
    assert result.usage is not None and result.usage.output_tokens == 2 * 408
    check("ImagesResponse", result.model_dump(exclude_none=True))


def test_image_edits_in_real_time(local_server: LocalServer) -> None:
    source = ("kite.png", b"\x89PNG\r\n\x1a\n", "image/png")
    result = client_for(local_server).images.edit(
        model="gpt-image-1", image=[source, source], prompt="make it blue", size="1024x1536", n=2
    )
    assert result.data is not None and len(result.data) == 2
    png = base64.b64decode(result.data[1].b64_json or "")
    assert png.startswith(b"\x89PNG") and struct.unpack(">II", png[16:24]) == (1024, 1536)
    check("ImagesResponse", result.model_dump(exclude_none=True))
    assert local_server.admin.ledger()[-1]["endpoint"] == "/v1/images/edits"


# The SDK warns that the hosted video API is deprecated; the endpoint is still in the Batch API.
@pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")
def test_videos_in_real_time(local_server: LocalServer) -> None:
    video = client_for(local_server).videos.create(
        prompt="a kite over the sea", seconds="8", size="1280x720"
    )
    assert (video.model, video.status, video.seconds, video.size) == (
        "sora-2",
        "completed",
        "8",
        "1280x720",
    )
    assert video.prompt == "a kite over the sea" and video.id.startswith("video_")
    check("VideoResource", video.model_dump(exclude_none=False))
    assert local_server.admin.ledger()[-1]["endpoint"] == "/v1/videos"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/images/edits", {"model": "gpt-image-1", "prompt": "blue"}, "images"),
        ("/images/edits", {"model": "gpt-image-1", "prompt": "x", "images": [{}]}, "images[0]"),
        ("/videos", {"prompt": "a kite", "seconds": "5"}, "seconds"),
        ("/videos", {"seconds": "4"}, "prompt"),
    ],
)
def test_media_mistakes_are_refused(
    local_server: LocalServer, path: str, body: dict[str, Any], param: str
) -> None:
    answer = httpx.post(local_server.base_url + path, json=body, timeout=60)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == param
    check("ErrorResponse", answer.json())


@pytest.mark.parametrize(
    ("endpoint", "body", "schema"),
    [
        (
            "/v1/completions",
            {"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon a time"},
            "CreateCompletionResponse",
        ),
        (
            "/v1/moderations",
            {"model": "omni-moderation-latest", "input": "hello"},
            "CreateModerationResponse",
        ),
        (
            "/v1/images/generations",
            {"model": "gpt-image-1", "prompt": "a red kite", "size": "1024x1536"},
            "ImagesResponse",
        ),
        (
            "/v1/images/edits",
            {
                "model": "gpt-image-1",
                "prompt": "make it blue",
                "images": [{"image_url": "https://example.com/kite.png"}],
            },
            "ImagesResponse",
        ),
        (
            "/v1/videos",
            {"model": "sora-2", "prompt": "a kite over the sea", "seconds": "12"},
            "VideoResource",
        ),
    ],
)
def test_batches_on_other_endpoints(
    local_server: LocalServer, endpoint: str, body: dict[str, Any], schema: str
) -> None:
    client = client_for(local_server)
    lines = [line("a", endpoint, **body), line("b", endpoint, **body)]
    lines[1]["body"].pop("prompt" if "prompt" in body else "input")
    batch = wait_for(client, submit(client, lines, endpoint=endpoint).id)
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data
    assert batch.errors.data[0].code == "invalid_request"
    check("Batch", batch.model_dump(exclude_none=False))
    batch = wait_for(client, submit(client, lines[:1], endpoint=endpoint).id)
    assert batch.status == "completed"
    check("Batch", batch.model_dump(exclude_none=False))
    output = by_custom_id(read_jsonl(client, batch.output_file_id))
    check(schema, output["a"]["response"]["body"])
    assert local_server.admin.ledger()[-1]["endpoint"] == endpoint


def test_proxy_forwards_moderations(local_server_factory: Callable[..., LocalServer]) -> None:
    upstream = local_server_factory()
    front = local_server_factory(
        responder="proxy", upstream=upstream.base_url, models=frozenset({"*"})
    )
    result = client_for(front).moderations.create(input="[flag] x")
    assert result.results[0].flagged
    assert [row["endpoint"] for row in upstream.admin.ledger()] == ["/v1/moderations"]
