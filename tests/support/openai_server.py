"""An OpenAI-compatible fine-tuning service on 127.0.0.1 for the tests: what the official `openai` client calls.

Answered (under /v1, each request checked for `Authorization: Bearer <key>`, else 401 as OpenAI answers):
  POST /files                               multipart upload (purpose fine-tune); the bytes are kept
  POST /fine_tuning/jobs                    create: model, training_file, validation_file, suffix, method or
                                            hyperparameters, metadata, seed
  GET  /fine_tuning/jobs                    list, with the metadata[key]=value filter
  GET  /fine_tuning/jobs/{id}               the job
  GET  /fine_tuning/jobs/{id}/events        newest first, `limit` and `after` (cursor: the last id of a page)
  GET  /fine_tuning/jobs/{id}/checkpoints   newest first, `limit` and `after`
  POST /fine_tuning/jobs/{id}/cancel        400 once the job has ended, as OpenAI does
  POST /chat/completions                    "echo: <last user message>" from a model the service knows

A job moves on with time from its creation: validating_files (the training file is read: every line a
{"messages": [...]} object, at least 10 of them, else it fails with OpenAI's kind of error; `reject` makes the
next job fail validation with that message; `refuse_create` answers every creation with that status, quoting
the key), queued, running (`steps` steps of `step_s` seconds, a metrics
event each, validation loss every other step when there is a validation file, a checkpoint every
`checkpoint_every` steps), succeeded with an `ft:` model. `created_jobs` and `uploads` count what was billed.
"""

from __future__ import annotations

import email.policy
import json
import math
import re
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

BASE_MODELS = ("gpt-4o-mini-2024-07-18", "gpt-4.1-nano-2025-04-14")
ENDED = ("succeeded", "failed", "cancelled")


@dataclass
class Job:
    body: dict[str, Any]
    id: str
    t0: float
    created_at: int
    status: str = "validating_files"
    events: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0
    error: dict[str, Any] | None = None
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    finished_at: int | None = None
    reject: str | None = None


class OpenAIServer:
    """`with OpenAIServer() as api:` serves on a free port; `api.base_url` is OPENAI_BASE_URL."""

    def __init__(self, key: str = "sk-test-key", *, steps: int = 6, step_s: float = 0.05, validate_s: float = 0.05,
                 checkpoint_every: int = 3) -> None:
        self.key, self.steps, self.step_s, self.validate_s = key, steps, step_s, validate_s
        self.checkpoint_every = checkpoint_every
        self.files: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, Job] = {}
        self.reject: str | None = None
        self.refuse_create: int | None = None  # an HTTP status every job creation gets (with the key in its body)
        self.created_jobs = self.uploads = 0
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Authorization
        self.chats: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> OpenAIServer:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                service._handle(self, "GET")

            def do_POST(self) -> None:
                service._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    # ---- the job's life ----------------------------------------------------------------------------

    def _event(self, job: Job, message: str, *, level: str = "info", kind: str = "message",
               data: dict[str, Any] | None = None) -> None:
        job.events.append({"object": "fine_tuning.job.event", "id": f"ftevent-{job.id[-4:]}-{len(job.events):05d}",
                           "created_at": int(time.time()), "level": level, "message": message, "type": kind,
                           "data": data or {}})

    def _advance(self, job: Job) -> None:
        if job.status in ENDED:
            return
        elapsed = time.monotonic() - job.t0
        if job.status == "validating_files" and elapsed >= self.validate_s:
            problem = job.reject or self._check_file(job.body["training_file"])
            if problem:
                job.status, job.finished_at = "failed", int(time.time())
                job.error = {"code": "invalid_training_file", "message": problem, "param": "training_file"}
                self._event(job, f"Training file validation failed: {problem}", level="error")
                return
            self._event(job, "Files validated, moving job to queued state")
            job.status = "queued"
        if job.status == "queued" and elapsed >= 2 * self.validate_s:
            self._event(job, "Fine-tuning job started")
            job.status = "running"
        while job.status == "running" and job.step < self.steps \
                and elapsed >= 2 * self.validate_s + (job.step + 1) * self.step_s:
            job.step += 1
            loss = 2.0 * math.exp(-job.step / 4) + 0.1
            data = {"step": job.step, "train_loss": loss, "total_steps": self.steps,
                    "train_mean_token_accuracy": min(1.0, 0.4 + job.step / (2 * self.steps))}
            if job.body.get("validation_file") and job.step % 2 == 0:
                data["valid_loss"] = loss + 0.05
            self._event(job, f"Step {job.step}/{self.steps}: training loss={loss:.4f}", kind="metrics", data=data)
            if job.step % self.checkpoint_every == 0 or job.step == self.steps:
                job.checkpoints.append({
                    "object": "fine_tuning.job.checkpoint", "id": f"ftckpt-{job.id[-4:]}-{job.step:04d}",
                    "created_at": int(time.time()), "fine_tuning_job_id": job.id, "step_number": job.step,
                    "fine_tuned_model_checkpoint": f"{self._model_name(job)}:ckpt-step-{job.step}",
                    "metrics": {"step": job.step, "train_loss": loss, "full_valid_loss": loss + 0.04}})
        if job.status == "running" and job.step >= self.steps:
            job.status, job.finished_at = "succeeded", int(time.time())
            job.fine_tuned_model = self._model_name(job)
            job.trained_tokens = len(self.files[job.body["training_file"]]["content"]) // 4 * 3
            self._event(job, f"New fine-tuned model created: {job.fine_tuned_model}")
            self._event(job, "The job has successfully completed")

    def _model_name(self, job: Job) -> str:
        suffix = job.body.get("suffix") or ""
        return f"ft:{job.body['model']}:llm-wizard-test:{suffix}:{job.id[-8:]}"

    def _check_file(self, file_id: str) -> str | None:
        lines = [line for line in self.files[file_id]["content"].decode().splitlines() if line.strip()]
        for n, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except ValueError:
                return f"Invalid file format. Line {n} is not valid JSON"
            if not isinstance(row.get("messages"), list):
                return f"Invalid file format. Line {n}, key \"messages\": missing"
        if len(lines) < 10:
            return f"Training file has {len(lines)} example(s), but must have at least 10 examples"
        return None

    def _job_json(self, job: Job) -> dict[str, Any]:
        self._advance(job)
        b = job.body
        hyper = dict((b.get("method") or {}).get("supervised", {}).get("hyperparameters") or b.get("hyperparameters")
                     or {})
        if job.status != "validating_files" and hyper.get("n_epochs", "auto") == "auto":
            hyper["n_epochs"] = 3  # "auto" resolved when the job starts, as OpenAI does
        return {"object": "fine_tuning.job", "id": job.id, "created_at": job.created_at, "model": b["model"],
                "status": job.status, "training_file": b["training_file"], "validation_file": b.get("validation_file"),
                "fine_tuned_model": job.fine_tuned_model, "finished_at": job.finished_at, "error": job.error,
                "trained_tokens": job.trained_tokens, "hyperparameters": hyper, "organization_id": "org-test",
                "result_files": [], "seed": b.get("seed", 0), "metadata": b.get("metadata"),
                "user_provided_suffix": b.get("suffix"), "estimated_finish": None,
                "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}}}

    # ---- HTTP ------------------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        auth = h.headers.get("Authorization")
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0)) if method == "POST" else b""
        with self.lock:
            self.requests.append((method, url.path, auth))
            if auth != f"Bearer {self.key}":
                given = (auth or "").removeprefix("Bearer ")  # echoed, as a careless service might: a canary
                return _send(h, 401, _error(f"Incorrect API key provided: {given}", "invalid_api_key"))
            try:
                status, answer = self._route(method, url.path, query, body, h.headers.get("Content-Type", ""))
            except KeyError as e:
                status, answer = 404, _error(f"No such object: {e}", "not_found")
        _send(h, status, answer)

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes,
               ctype: str) -> tuple[int, dict[str, Any]]:
        if (method, path) == ("POST", "/v1/files"):
            return self._upload(body, ctype)
        if (method, path) == ("POST", "/v1/fine_tuning/jobs"):
            if self.refuse_create is not None:  # an unexpected answer, quoting what it was sent (a careless proxy)
                return self.refuse_create, _error(f"quota exceeded for key {self.key}", "billing_hard_limit_reached")
            return self._create(json.loads(body))
        if (method, path) == ("GET", "/v1/fine_tuning/jobs"):
            wanted = {m.group(1): v for k, v in query.items() if (m := re.fullmatch(r"metadata\[(.+)\]", k))}
            jobs = [self._job_json(j) for j in reversed(self.jobs.values())
                    if all((j.body.get("metadata") or {}).get(k) == v for k, v in wanted.items())]
            return 200, {"object": "list", "data": jobs[:int(query.get("limit", 20))], "has_more": False}
        if (method, path) == ("POST", "/v1/chat/completions"):
            return self._chat(json.loads(body))
        m = re.fullmatch(r"/v1/fine_tuning/jobs/([^/]+)(?:/(events|checkpoints|cancel))?", path)
        if m is None:
            return 404, _error(f"Invalid URL ({method} {path})", "unknown_url")
        job = self.jobs[m.group(1)]
        if m.group(2) is None and method == "GET":
            return 200, self._job_json(job)
        if m.group(2) == "cancel" and method == "POST":
            self._advance(job)
            if job.status in ENDED:
                return 400, _error(f"Job has already completed: {job.id}", None)
            job.status, job.finished_at = "cancelled", int(time.time())
            self._event(job, "Fine-tuning job cancelled")
            return 200, self._job_json(job)
        if m.group(2) in ("events", "checkpoints") and method == "GET":
            self._advance(job)
            items = list(reversed(job.events if m.group(2) == "events" else job.checkpoints))
            if "after" in query:
                ids = [i["id"] for i in items]
                items = items[ids.index(query["after"]) + 1:] if query["after"] in ids else []
            limit = int(query.get("limit", 20))
            return 200, {"object": "list", "data": items[:limit], "has_more": len(items) > limit}
        return 404, _error(f"Invalid URL ({method} {path})", "unknown_url")

    def _upload(self, body: bytes, ctype: str) -> tuple[int, dict[str, Any]]:
        message = BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
        parts = {p.get_param("name", header="content-disposition"): p for p in message.iter_parts()}
        if "file" not in parts or parts.get("purpose") is None:
            return 400, _error("file and purpose are required", None)
        content = parts["file"].get_payload(decode=True)
        self.uploads += 1
        file_id = f"file-{self.uploads:04d}"
        self.files[file_id] = {"content": content, "filename": parts["file"].get_filename(),
                               "purpose": parts["purpose"].get_payload(decode=True).decode()}
        return 200, {"object": "file", "id": file_id, "bytes": len(content), "created_at": int(time.time()),
                     "filename": self.files[file_id]["filename"], "purpose": self.files[file_id]["purpose"],
                     "status": "processed"}

    def _create(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        for key in ("training_file", "validation_file"):
            if body.get(key) and body[key] not in self.files:
                return 400, _error(f"invalid {key}: {body[key]}", "invalid_request_error", param=key)
        if body.get("model") not in BASE_MODELS:
            return 400, _error(f"Model {body.get('model')} is not available for fine-tuning or does not exist.",
                               "model_not_available", param="model")
        self.created_jobs += 1
        job = Job(body, f"ftjob-{self.created_jobs:08d}", time.monotonic(), int(time.time()), reject=self.reject)
        self.reject = None
        self.jobs[job.id] = job
        self._event(job, f"Created fine-tuning job: {job.id}")
        self._event(job, f"Validating training file: {body['training_file']}")
        return 200, self._job_json(job)

    def _chat(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        known = {j.fine_tuned_model for j in self.jobs.values()} | set(BASE_MODELS)
        if body.get("model") not in known:
            return 404, _error(f"The model `{body.get('model')}` does not exist or you do not have access to it.",
                               "model_not_found")
        self.chats.append(body)
        last = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        return 200, {"object": "chat.completion", "id": f"chatcmpl-{len(self.chats)}", "created": int(time.time()),
                     "model": body["model"], "choices": [{"index": 0, "finish_reason": "stop", "message": {
                         "role": "assistant", "content": f"echo: {last}"}}],
                     "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}


def _error(message: str, code: str | None, *, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def _send(h: BaseHTTPRequestHandler, status: int, answer: dict[str, Any]) -> None:
    data = json.dumps(answer).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)
