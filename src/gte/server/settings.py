"""`ServerSettings`: the limits and options of one server (the same for every model it serves)."""

from __future__ import annotations

from dataclasses import dataclass

import gte_defaults as defaults


@dataclass(frozen=True)
class ServerSettings:
    max_batch_tokens: int = defaults.MAX_BATCH_TOKENS  # token budget of one merged batch (a big request runs in several)
    max_wait_ms: float = defaults.MAX_WAIT_MS  # how long the oldest queued job waits for company
    max_concurrent_requests: int = defaults.MAX_CONCURRENT_REQUESTS  # inference requests in flight per model; more get 429
    max_client_batch_size: int = defaults.MAX_CLIENT_BATCH_SIZE  # inputs per request; more get 413
    api_key: str | None = None  # when set, requests need "Authorization: Bearer <key>"
    batching: bool = True  # False: every job is its own batch (a baseline for benchmarks)
    payload_limit: int = defaults.PAYLOAD_LIMIT  # bytes of one request body; more get 413 before they are read
    body_timeout_s: float = defaults.BODY_TIMEOUT_S  # a request body must arrive within this time; else 408
    # the prompt put before the texts of a request without prompt_name (default: the checkpoint's default prompt)
    default_prompt_name: str | None = None  # one of the checkpoint's prompts, by name
    default_prompt: str | None = None  # the text itself

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "max_concurrent_requests", "max_client_batch_size", "payload_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_wait_ms", "body_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.default_prompt_name is not None and self.default_prompt is not None:
            raise ValueError("give a default prompt name or a default prompt, not both")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key is empty: give a key, or none to serve without authentication")
