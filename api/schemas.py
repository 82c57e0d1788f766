"""Request bodies, validated with limits so bad input is a 400, never a 500."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

MAX_ID = 2**63 - 1  # ids are bigint


class JobCreate(BaseModel):
    """A batch as JSON. For large batches send JSONL (``application/x-ndjson``) instead."""

    model_config = ConfigDict(extra="forbid")

    preset: str = Field(min_length=1, max_length=100)
    items: list[dict[str, Any]] = Field(min_length=1, max_length=100_000)
    budget: Decimal | None = Field(default=None, gt=0, max_digits=20, decimal_places=8)
    skip_invalid: bool = False
    webhook_url: HttpUrl | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=1_000_000)


class ChatRequest(BaseModel):
    """OpenAI's chat completion request; ``model`` names a MoA preset. Sampling settings
    come from the preset, so temperature and the like are accepted and not applied."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=100)
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    stream: bool = False
