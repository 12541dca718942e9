"""The local server alone: a structured-output batch through the official SDK, no key.

It starts the local server in-process with the llama responder (SmolLM2-135M from its wheel),
sends one batch through the Batch API with the official SDK, and prints each answer beside
its input.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import openai

from batchpilot.errors import BatchpilotError
from batchpilot.server import LocalServer, ServerConfig

HERE = Path(__file__).parent.parent / "demo"
SCHEMA = {
    "type": "object",
    "properties": {
        "deaths": {
            "type": "array",
            "maxItems": 3,
            "items": {"type": "string", "maxLength": 24},
        },
        "tone": {"type": "string", "enum": ["happy", "sad", "tense"]},
    },
    "required": ["deaths", "tone"],
    "additionalProperties": False,
}


def main() -> int:
    rows = [json.loads(line) for line in (HERE / "plots.jsonl").read_text().splitlines()]
    lines = []
    for row in rows:
        body = {
            "model": "smollm2",
            "temperature": 0,
            "max_tokens": 80,
            "messages": [
                {
                    "role": "system",
                    "content": "List the characters who die in the plot, "
                    "and the tone of the story. Answer in JSON.",
                },
                {"role": "user", "content": row["plot"]},
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "deaths", "strict": True, "schema": SCHEMA},
            },
        }
        lines.append(
            json.dumps(
                {
                    "custom_id": row["id"],
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": body,
                }
            )
        )
    state = Path(".batchpilot/demo-server")
    config = ServerConfig(
        state_dir=state, responder="llama", validation_delay_s=0, finalizing_delay_s=0
    )
    try:
        server = LocalServer(config).start()
    except BatchpilotError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="local")
        upload = client.files.create(
            file=("demo.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch"
        )
        batch = client.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"job": "demo"},
        )
        print(f"submitted {batch.id} ({len(lines)} requests) to the local model")
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.5)
            batch = client.batches.retrieve(batch.id)
            counts = batch.request_counts
            done = counts.completed + counts.failed if counts else 0
            print(f"  {batch.status:<12} {done}/{len(lines)}", flush=True)
        if batch.output_file_id is None:
            print(f"batch ended as {batch.status}: {batch.errors}", file=sys.stderr)
            return 1
        answers = {}
        for line in client.files.content(batch.output_file_id).text.splitlines():
            item = json.loads(line)
            content = item["response"]["body"]["choices"][0]["message"]["content"]
            try:
                answers[item["custom_id"]] = json.dumps(json.loads(content))
            except ValueError:
                answers[item["custom_id"]] = f"(not JSON) {content!r}"
        print()
        for row in rows:
            print(f"{row['title']:<20} {answers.get(row['id'], '(failed)')}")
        usage = batch.usage
        if usage is not None:
            print(f"\n{usage.input_tokens} input and {usage.output_tokens} output tokens, $0.00")
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
