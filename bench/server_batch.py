"""Benchmark: one 50,000-line chat batch through the local server, upload to downloaded output.

    python bench/server_batch.py [--lines 50000]

Reports the wall time beside two references measured in the same run: the Files API moving the
same bytes up and down (the transport floor), and the synthetic responder answering the same
bodies in-process (the compute floor). The ratio is total / (transport + compute).
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import openai

from batchpilot.server import LocalServer, ServerConfig
from batchpilot.server.responders.synthetic import SyntheticResponder


def make_lines(count: int) -> bytes:
    rows = []
    for i in range(count):
        body = {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Extract the characters who die in this plot."},
                {
                    "role": "user",
                    "content": f"Plot {i}: a sailor meets a storm and a lighthouse keeper "
                    "who keeps a secret about the island's past, until the night of the festival.",
                },
            ],
            "max_tokens": 50,
        }
        rows.append(
            json.dumps(
                {
                    "custom_id": f"row-{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": body,
                }
            )
        )
    return ("\n".join(rows) + "\n").encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=50_000)
    args = parser.parse_args()
    data = make_lines(args.lines)
    with tempfile.TemporaryDirectory() as tmp:
        # The default latency model (1 s validating, 200k tokens/s, 1 s finalizing), sped up.
        config = ServerConfig(state_dir=Path(tmp), time_scale=1000.0)
        with LocalServer(config) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="bench", max_retries=0)

            started = time.perf_counter()
            file_id = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch").id
            batch = client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            while batch.status not in ("completed", "failed", "expired", "cancelled"):
                time.sleep(0.05)
                batch = client.batches.retrieve(batch.id)
            assert batch.status == "completed", batch.errors
            output = client.files.content(batch.output_file_id or "").read()
            total = time.perf_counter() - started
            assert output.count(b"\n") == args.lines

            started = time.perf_counter()
            echo_id = client.files.create(file=("echo.jsonl", io.BytesIO(data)), purpose="batch").id
            client.files.content(echo_id).read()
            client.files.content(batch.output_file_id or "").read()
            transport = time.perf_counter() - started

    responder = SyntheticResponder()
    started = time.perf_counter()
    for line in data.splitlines():
        responder.chat(json.loads(line)["body"])
    compute = time.perf_counter() - started

    print(f"lines                      {args.lines}")
    print(f"input file                 {len(data) / 1e6:.1f} MB, output {len(output) / 1e6:.1f} MB")
    print(f"upload -> downloaded       {total:.2f} s")
    print(f"reference: files up/down   {transport:.2f} s")
    print(f"reference: responder only  {compute:.2f} s")
    print(f"ratio total/(transport+compute) = {total / (transport + compute):.2f}")


if __name__ == "__main__":
    main()
