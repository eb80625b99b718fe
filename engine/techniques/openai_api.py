"""The OpenAI API as the hosted technique and its chat use it: the official client keyed from OPENAI_API_KEY (never
written anywhere) at OPENAI_BASE_URL, the service's refusals as UserError in its own words, and a finished run's
final/openai.json."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from engine.errors import UserError

FINAL = "openai.json"  # final/openai.json: the ft: model and its job


def client(timeout: float = 60.0) -> Any:
    """The official client, keyed from OPENAI_API_KEY (never written anywhere), at OPENAI_BASE_URL if set."""
    try:
        import openai
    except ImportError:
        raise UserError("hosted fine-tuning needs the OpenAI client: pip install 'llm-wizard[openai]'",
                        field="technique") from None
    key = os.environ.get("OPENAI_API_KEY", "").strip()
    if not key:
        raise UserError("set OPENAI_API_KEY to your OpenAI API key (it is read from the environment and never "
                        "written to the run folder); OPENAI_BASE_URL points at an OpenAI-compatible service",
                        field="OPENAI_API_KEY")
    return openai.OpenAI(api_key=key, base_url=os.environ.get("OPENAI_BASE_URL") or None, timeout=timeout,
                         max_retries=3)


def service() -> str:
    """Where the API is, for final/openai.json and messages: OPENAI_BASE_URL without any credentials in it."""
    url = os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


def _message(e: Any) -> str:
    """The service's own words for a refused request (the error object's message), else the client's."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        if isinstance(inner.get("message"), str):
            param = f" ({inner['param']})" if isinstance(inner.get("param"), str) else ""
            return inner["message"] + param
    return str(getattr(e, "message", None) or e)


@contextmanager
def calling(doing: str, *, retry_later: bool = False) -> Iterator[None]:
    """API errors as UserError saying what was being done and what the service answered. A service that cannot
    be reached (after the client's retries) is one too, unless `retry_later` (following a job that goes on
    remotely meanwhile): then it, a 5xx and a rate limit are left to the caller."""
    import openai

    try:
        yield
    except openai.APIConnectionError as e:
        if retry_later:
            raise
        raise UserError(f"{doing}: cannot reach {service()} ({type(e).__name__}); check the network, or "
                        "OPENAI_BASE_URL") from None
    except openai.AuthenticationError:
        raise UserError(f"{doing}: the API refused the key (401): check OPENAI_API_KEY", field="OPENAI_API_KEY") \
            from None
    except (openai.BadRequestError, openai.NotFoundError, openai.PermissionDeniedError,
            openai.UnprocessableEntityError, openai.ConflictError) as e:
        raise UserError(f"{doing}: {service()} answered {e.status_code}: {_message(e)}") from None


def final_model(run: Path) -> dict[str, Any]:
    """final/openai.json of a finished run; UserError when the run has none."""
    path = Path(run) / "final" / FINAL
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"run {Path(run).name} has no fine-tuned OpenAI model yet ({path} appears when the job "
                        "succeeds)", field="run") from None
