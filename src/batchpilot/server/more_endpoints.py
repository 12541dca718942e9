"""The other endpoints the Batch API accepts: legacy completions (answered through the
responder's chat), moderations (scored deterministically, or by the upstream when the
responder can moderate) and image generations (plain PNGs), in the API's answer shapes."""

from __future__ import annotations

import base64
import hashlib
import struct
import zlib
from typing import Any

from batchpilot.server.responders.base import Responder, ResponderError
from batchpilot.tokens import count_text

__all__ = ["complete", "count_tokens", "generate_images", "moderate"]

JSON = dict[str, Any]

MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
# Text the synthetic moderation flags, so that a test can ask for a flagged answer.
FLAG_MARKER = "[flag]"


def _prompts(body: JSON) -> list[str]:
    prompt = body.get("prompt")
    if prompt is None:
        raise ResponderError(
            "Missing required parameter: 'prompt'.",
            param="prompt",
            code="missing_required_parameter",
        )
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ResponderError(
            "Invalid 'prompt': expected a string or an array of strings.",
            param="prompt",
            code="invalid_value",
        )
    return prompts


def _inputs(body: JSON) -> list[str]:
    value = body.get("input")
    if value is None:
        raise ResponderError(
            "Missing required parameter: 'input'.",
            param="input",
            code="missing_required_parameter",
        )
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ResponderError(
            "Invalid 'input': expected a string, an array of strings or of input parts.",
            param="input",
            code="invalid_value",
        )
    texts: list[str] = []
    for item in items:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict) and item.get("type") == "text":
            texts.append(str(item.get("text") or ""))
        elif isinstance(item, dict) and item.get("type") == "image_url":
            texts.append("")
        else:
            raise ResponderError(
                "Invalid 'input': expected a string, an array of strings or of input parts.",
                param="input",
                code="invalid_value",
            )
    return texts


def count_tokens(body: JSON, endpoint: str) -> int:
    """Input tokens of a completions or moderations body."""
    model = str(body.get("model") or "gpt-4o-mini")
    texts = _inputs(body) if endpoint == "/v1/moderations" else _prompts(body)
    return sum(count_text(text, model) for text in texts)


def complete(responder: Responder, body: JSON) -> JSON:
    """A `text_completion` for a `/v1/completions` body: each prompt asked as one user message;
    `max_tokens`, `n`, `temperature`, `top_p` and `seed` carried over."""
    prompts = _prompts(body)
    choices: list[JSON] = []
    prompt_tokens = completion_tokens = 0
    model = body.get("model")
    first: JSON = {}
    for prompt in prompts:
        chat: JSON = {"model": model, "messages": [{"role": "user", "content": prompt}]}
        chat.update({k: body[k] for k in ("n", "temperature", "top_p", "seed") if k in body})
        chat["max_completion_tokens"] = body.get("max_tokens", 16)
        answer = responder.chat(chat)
        first = first or answer
        usage = answer.get("usage") or {}
        prompt_tokens += int(usage.get("prompt_tokens") or 0)
        completion_tokens += int(usage.get("completion_tokens") or 0)
        for choice in answer.get("choices") or []:
            text = (choice.get("message") or {}).get("content") or ""
            echo = prompt if body.get("echo") else ""
            choices.append(
                {
                    "text": echo + text,
                    "index": len(choices),
                    "logprobs": None,
                    "finish_reason": "length"
                    if choice.get("finish_reason") == "length"
                    else "stop",
                }
            )
    digest = hashlib.sha256(str(first.get("id")).encode()).hexdigest()
    return {
        "id": "cmpl-" + digest[:29],
        "object": "text_completion",
        "created": first.get("created", 0),
        "model": first.get("model", model),
        "system_fingerprint": first.get("system_fingerprint"),
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _score(text: str, category: str) -> float:
    digest = hashlib.sha256(f"{category}\0{text}".encode()).hexdigest()
    return round(int(digest[:8], 16) / 0xFFFFFFFF * 0.01, 8)


def moderate(responder: Responder, body: JSON) -> JSON:
    """A moderation answer for a `/v1/moderations` body: the upstream's when the responder can
    moderate (`moderate(body)`), otherwise low deterministic scores, and every category flagged
    with a score near 1 for text holding `[flag]`."""
    forward = getattr(responder, "moderate", None)
    if callable(forward):
        answer: JSON = forward(body)
        return answer
    texts = _inputs(body)
    model = str(body.get("model") or "omni-moderation-latest")
    results: list[JSON] = []
    for text in texts:
        flagged = FLAG_MARKER in text
        scores = {c: (0.99 if flagged else _score(text, c)) for c in MODERATION_CATEGORIES}
        results.append(
            {
                "flagged": flagged,
                "categories": dict.fromkeys(MODERATION_CATEGORIES, flagged),
                "category_scores": scores,
                "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES},
            }
        )
    digest = hashlib.sha256(("\0".join(texts) + model).encode()).hexdigest()
    return {"id": "modr-" + digest[:32], "model": model, "results": results}


_IMAGE_SIZES = ("1024x1024", "1024x1536", "1536x1024", "256x256", "512x512", "1792x1024")
# gpt-image-1's output tokens per image, by quality, for square and for oblong sizes.
_IMAGE_TOKENS = {"low": (272, 408), "medium": (1056, 1584), "high": (4160, 6240)}


def _png(width: int, height: int, colour: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress((b"\x00" + colour * width) * height, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def generate_images(body: JSON) -> JSON:
    """An images answer for a `/v1/images/generations` body: `n` plain PNGs of the asked
    `size`, one colour each from the prompt, as `b64_json`; `usage` for the gpt-image models."""
    prompts = _prompts(body)
    if len(prompts) != 1:
        raise ResponderError(
            "Invalid 'prompt': expected a string.", param="prompt", code="invalid_type"
        )
    size = body.get("size") or "1024x1024"
    if size == "auto":
        size = "1024x1024"
    if size not in _IMAGE_SIZES:
        supported = ", ".join(f"'{s}'" for s in _IMAGE_SIZES)
        raise ResponderError(
            f"Invalid value: '{size}'. Supported values are: {supported} and 'auto'.",
            param="size",
            code="invalid_value",
        )
    n = body.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10:
        raise ResponderError(
            "Invalid 'n': expected an integer from 1 to 10.", param="n", code="invalid_value"
        )
    width, height = (int(part) for part in size.split("x"))
    data: list[JSON] = []
    for index in range(n):
        colour = hashlib.sha256(f"{prompts[0]}\0{index}".encode()).digest()[:3]
        data.append({"b64_json": base64.b64encode(_png(width, height, colour)).decode("ascii")})
    answer: JSON = {"created": 0, "data": data}
    model = str(body.get("model") or "dall-e-2")
    if model.startswith("gpt-image"):
        quality = body.get("quality") if body.get("quality") in _IMAGE_TOKENS else "medium"
        per_image = _IMAGE_TOKENS[str(quality)][0 if width == height else 1]
        prompt_tokens = count_text(prompts[0], "gpt-4o")
        answer.update(
            background="opaque",
            output_format="png",
            quality=quality,
            size=size,
            usage={
                "input_tokens": prompt_tokens,
                "input_tokens_details": {"text_tokens": prompt_tokens, "image_tokens": 0},
                "output_tokens": per_image * n,
                "total_tokens": prompt_tokens + per_image * n,
            },
        )
    return answer
