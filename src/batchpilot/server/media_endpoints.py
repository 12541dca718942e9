"""Image edits and videos, the Batch API's media endpoints, in the API's answer shapes.

A batch line's body is JSON (`images` as `image_url`/`file_id` references for an edit); the
SDK's real-time calls upload multipart forms, read here into the same JSON body."""

from __future__ import annotations

import hashlib
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request

from batchpilot.server.more_endpoints import generate_images
from batchpilot.server.responders.base import ResponderError

__all__ = ["DEFAULT_VIDEO_MODEL", "create_video", "edit_images", "form_body"]

JSON = dict[str, Any]

DEFAULT_VIDEO_MODEL = "sora-2"
_EDIT_SIZES = ("auto", "1024x1024", "1536x1024", "1024x1536", "256x256", "512x512")
_VIDEO_SIZES = ("720x1280", "1280x720", "1024x1792", "1792x1024")
_VIDEO_SECONDS = ("4", "8", "12")
_INTEGER_FIELDS = ("n", "output_compression", "partial_images")
# How long a finished video's assets stay downloadable.
_VIDEO_EXPIRY_S = 3600


def _invalid(message: str, param: str, code: str = "invalid_value") -> ResponderError:
    return ResponderError(message, param=param, code=code)


def edit_images(body: JSON) -> JSON:
    """An images answer for a `/v1/images/edits` body: as a generation from its prompt, once
    it names the images to edit (`images` in JSON, `image` parts in a form)."""
    images = body.get("images", body.get("image"))
    if isinstance(images, (str, dict)):
        images = [images]
    if not isinstance(images, list) or not images:
        raise _invalid(
            "Missing required parameter: 'images'.", "images", "missing_required_parameter"
        )
    for index, image in enumerate(images):
        if isinstance(image, dict) and not (image.get("image_url") or image.get("file_id")):
            raise _invalid(
                f"Invalid 'images[{index}]': give one of 'image_url' or 'file_id'.",
                f"images[{index}]",
            )
    if body.get("size") not in (None, *_EDIT_SIZES):
        supported = ", ".join(f"'{s}'" for s in _EDIT_SIZES)
        raise _invalid(
            f"Invalid value: '{body['size']}'. Supported values are: {supported}.", "size"
        )
    return generate_images({k: v for k, v in body.items() if k not in ("images", "image", "mask")})


def create_video(body: JSON, now: float) -> JSON:
    """The video object for a `/v1/videos` body, already `completed`: the local server renders
    nothing, so the job finishes the moment it is created."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise _invalid(
            "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter"
        )
    size = body.get("size") or "720x1280"
    if size not in _VIDEO_SIZES:
        supported = ", ".join(f"'{s}'" for s in _VIDEO_SIZES)
        raise _invalid(f"Invalid value: '{size}'. Supported values are: {supported}.", "size")
    seconds = str(body.get("seconds") or "4")
    if seconds not in _VIDEO_SECONDS:
        supported = ", ".join(f"'{s}'" for s in _VIDEO_SECONDS)
        raise _invalid(f"Invalid value: '{seconds}'. Supported values are: {supported}.", "seconds")
    model = str(body.get("model") or DEFAULT_VIDEO_MODEL)
    digest = hashlib.sha256(f"{model}\0{prompt}\0{size}\0{seconds}\0{now}".encode()).hexdigest()
    created = int(now)
    return {
        "id": f"video_{digest[:32]}",
        "object": "video",
        "model": model,
        "status": "completed",
        "progress": 100,
        "created_at": created,
        "completed_at": created,
        "expires_at": created + _VIDEO_EXPIRY_S,
        "prompt": prompt,
        "size": size,
        "seconds": seconds,
        "remixed_from_video_id": None,
        "error": None,
    }


async def form_body(request: Request) -> JSON:
    """A multipart form as a JSON body: text fields as given (integers where the API has
    them), each file part as its file name; a field sent more than once (`image[]`) as a
    list."""
    body: JSON = {}
    async with request.form() as form:
        for raw_key, value in form.multi_items():
            key = raw_key.removesuffix("[]")
            item: Any = value.filename or "upload" if isinstance(value, UploadFile) else value
            if key in _INTEGER_FIELDS and isinstance(item, str) and item.lstrip("-").isdigit():
                item = int(item)
            if raw_key.endswith("[]") or key in body:
                previous = body.get(key, [])
                body[key] = [*(previous if isinstance(previous, list) else [previous]), item]
            else:
                body[key] = item
    return body
