"""`batchpilot serve`: the local OpenAI-compatible server."""

from __future__ import annotations

import os
from pathlib import Path

import click

from batchpilot.errors import ConfigError
from batchpilot.localmodel import default_slots
from batchpilot.server import LocalServer, ServerConfig, load_fault_plan
from batchpilot.server.config import RateLimit, parse_queue_limit, parse_rate_limit

__all__ = ["serve"]

# The limits' defaults are the server configuration's own (the real API's).
_DEFAULTS = ServerConfig(state_dir=Path())


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Without --api-key only loopback clients are answered.",
)
@click.option(
    "--port",
    default=8089,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0 picks a free one).",
)
@click.option(
    "--state",
    "state_dir",
    default="./.batchpilot/server",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the server's SQLite state and files; restart on the same "
    "directory to continue where it stopped.",
)
@click.option(
    "--responder",
    type=click.Choice(["synthetic", "llama", "proxy"]),
    default="synthetic",
    show_default=True,
    help="What answers requests: deterministic synthetic answers, a local GGUF model "
    "through llama.cpp, or a proxy to a real-time OpenAI-compatible endpoint.",
)
@click.option(
    "--model-path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="GGUF file for --responder llama (default: the bundled SmolLM2-135M).",
)
@click.option(
    "--upstream",
    metavar="URL",
    help="Base URL for --responder proxy, e.g. http://127.0.0.1:8000/v1. Its key is "
    "read from BATCHPILOT_UPSTREAM_API_KEY.",
)
@click.option(
    "--time-scale",
    type=float,
    default=1.0,
    show_default=True,
    help="Virtual seconds per real second; 3600 lets a 24 h window pass in 24 s.",
)
@click.option(
    "--queue-limit",
    "queue_limits",
    multiple=True,
    metavar="MODEL=TOKENS",
    help="Enqueued-token limit per model, e.g. gpt-4o-mini=2000000. Repeatable.",
)
@click.option(
    "--rate-limit",
    "rate_limits",
    multiple=True,
    metavar="MODEL=rpm:N,tpm:N,rpd:N",
    help="Real-time limits per model, answered with 429 and x-ratelimit-* headers. Repeatable.",
)
@click.option(
    "--faults",
    "faults_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML/JSON fault plan (see docs/server.md).",
)
@click.option(
    "--api-key",
    "api_keys",
    multiple=True,
    envvar="BATCHPILOT_SERVER_API_KEY",
    show_envvar=True,
    help="Require a bearer key on every request. Repeatable (the variable takes several keys "
    "separated by spaces); each key is its own project and sees only its own files and batches.",
)
@click.option(
    "--validation-delay",
    type=float,
    default=1.0,
    show_default=True,
    help="Virtual seconds a batch stays in 'validating'.",
)
@click.option(
    "--tokens-per-second",
    type=float,
    default=200_000.0,
    show_default=True,
    help="Virtual processing rate of a batch, in input tokens per second.",
)
@click.option(
    "--realtime-latency",
    type=float,
    default=0.0,
    show_default=True,
    help="Wall-clock seconds each real-time answer takes (a slow upstream).",
)
@click.option(
    "--flex-latency",
    type=float,
    default=None,
    help="Wall-clock seconds each answer at the flex tier takes (default: --realtime-latency).",
)
@click.option(
    "--flex-refusal-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of flex-tier tries refused with 429 resource_unavailable.",
)
@click.option(
    "--finalizing-delay",
    type=float,
    default=1.0,
    show_default=True,
    help="Virtual seconds a batch stays in 'finalizing'.",
)
@click.option(
    "--models",
    "models",
    metavar="NAME,NAME",
    help="Models the server accepts (default: common OpenAI names, 'local' and "
    "'smollm2'); '*' accepts any.",
)
@click.option(
    "--max-request-bytes",
    type=click.IntRange(min=1),
    default=_DEFAULTS.max_json_bytes,
    show_default=True,
    help="Largest JSON request body (and batch input line); larger ones get 413.",
)
@click.option(
    "--max-upload-bytes",
    type=click.IntRange(min=1),
    default=_DEFAULTS.max_upload_bytes,
    show_default=True,
    help="Largest uploaded file; larger ones get 413.",
)
@click.option(
    "--max-storage-bytes",
    type=click.IntRange(min=1),
    default=_DEFAULTS.max_storage_bytes,
    show_default=True,
    help="Bytes of files each project (API key) may hold; uploads past it get 400.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="Requests answered in parallel inside a batch (llama: the model's decoding slots, "
    "default chosen from the machine; other responders: default 1).",
)
@click.option(
    "--model-threads",
    type=click.IntRange(min=1),
    help="llama: CPU threads the model computes with (default: llama.cpp's choice, the "
    "physical cores).",
)
def serve(
    host: str,
    port: int,
    state_dir: Path,
    responder: str,
    model_path: Path | None,
    upstream: str | None,
    time_scale: float,
    queue_limits: tuple[str, ...],
    rate_limits: tuple[str, ...],
    faults_file: Path | None,
    api_keys: tuple[str, ...],
    validation_delay: float,
    tokens_per_second: float,
    realtime_latency: float,
    flex_latency: float | None,
    flex_refusal_rate: float,
    finalizing_delay: float,
    models: str | None,
    max_request_bytes: int,
    max_upload_bytes: int,
    max_storage_bytes: int,
    threads: int | None,
    model_threads: int | None,
) -> None:
    """Run the local OpenAI-compatible server (Files, Batches, Responses, Chat Completions,
    Embeddings, Completions, Moderations, Image generations, Models).

    It is a test double with a virtual clock and injectable faults, the engine behind
    `provider: local`, and a Batch API in front of any real-time endpoint.
    """
    if time_scale <= 0:
        raise ConfigError("--time-scale must be positive")
    if tokens_per_second <= 0:
        raise ConfigError("--tokens-per-second must be positive")
    if realtime_latency < 0:
        raise ConfigError("--realtime-latency must not be negative")
    if flex_latency is not None and flex_latency < 0:
        raise ConfigError("--flex-latency must not be negative")
    rate: dict[str, RateLimit] = dict(parse_rate_limit(text) for text in rate_limits)
    if threads is None:
        threads = default_slots(model_path) if responder == "llama" else 1
    config = ServerConfig(
        state_dir=state_dir,
        host=host,
        port=port,
        responder=responder,
        model_path=model_path,
        upstream=upstream,
        upstream_api_key=os.environ.get("BATCHPILOT_UPSTREAM_API_KEY"),
        time_scale=time_scale,
        validation_delay_s=validation_delay,
        processing_tokens_per_s=tokens_per_second,
        finalizing_delay_s=finalizing_delay,
        realtime_latency_s=realtime_latency,
        flex_latency_s=flex_latency,
        flex_refusal_rate=flex_refusal_rate,
        queue_limits=dict(parse_queue_limit(text) for text in queue_limits),
        rate_limits=rate,
        models=frozenset(m.strip() for m in models.split(",")) if models else None,
        faults=load_fault_plan(faults_file) if faults_file else None,
        api_key=api_keys[0] if api_keys else None,
        api_keys=tuple(api_keys[1:]),
        responder_threads=threads,
        model_threads=model_threads,
        max_json_bytes=max_request_bytes,
        max_upload_bytes=max_upload_bytes,
        max_storage_bytes=max_storage_bytes,
    )
    if host not in ("127.0.0.1", "localhost", "::1") and not api_keys:
        click.secho(
            f"Warning: listening on {host} without --api-key; only loopback clients are answered.",
            fg="yellow",
            err=True,
        )
    server = LocalServer(config)
    click.echo(
        f"batchpilot server ({responder}) on http://{host}:{port}/v1 — state in {state_dir}; "
        "Ctrl-C stops it.",
        err=True,
    )
    server.serve_forever()
