"""A Hugging Face Hub on 127.0.0.1 for the tests: the endpoints huggingface_hub's own client code calls.

Repos are folders of files held in memory, each a list of commits (`main` is the newest). Answered:
  GET  /api/{models|datasets}/{id}[/revision/{rev}]     repo info: sha, siblings with sizes, gated, safetensors
  GET  /api/{models|datasets}/{id}/tree/{rev}[/{path}]  the file listing snapshot_download reads
  HEAD/GET /{id}/resolve/{rev}/{file}, /datasets/{id}/resolve/{rev}/{file}
       with ETag / X-Linked-Etag / X-Linked-Size / X-Repo-Commit / Content-Length, and Range (206)
  POST /api/repos/create                                 {name, organization, type, visibility|private}: a
       new repo whose first commit holds .gitattributes, as on the Hub; 409 when it exists (exist_ok passes)
  POST /api/validate-yaml                                the README front matter parsed; 400 with errors if bad
  POST /api/{models|datasets}/{id}/preupload/{rev}       every file "regular" (its bytes ride in the commit, so
       no LFS or Xet storage is needed), with the oid of the file already there so unchanged files are skipped
  POST /api/{models|datasets}/{id}/commit/{rev}          the NDJSON body (header, file with base64 content,
       deletedFile, deletedFolder) as a new commit of the branch; lfsFile entries are refused (422)
Gated repos answer file requests with 401 (no token) or 403 (a token without access) and X-Error-Code
GatedRepo, as the Hub does; a private repo is 404 RepoNotFound to any token but its creator's, and so is an
unknown repo; writes without a token are 401. `rate` (bytes/s) throttles file bodies so a test can kill a
download half-way. Every request is recorded (method, path, Range, Authorization) so a test can check that
the token was sent and that a resumed download asked for the rest only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

LFS_SUFFIXES = (".safetensors", ".bin", ".parquet", ".pt", ".pth", ".arrow")
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    kind: str  # model | dataset
    commits: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)
    gated: str | bool = False  # False, "auto" or "manual"
    allowed_tokens: tuple[str, ...] = ()  # tokens that were granted access to a gated repo
    parameters: int | None = None  # the API's safetensors.total
    private: bool = False
    owner_token: str | None = None  # the token that created it: the only one a private repo answers
    messages: dict[str, str] = field(default_factory=dict)  # commit sha -> its summary

    def commit(self, rev: str) -> tuple[str, dict[str, bytes]] | None:
        if rev == "main" and self.commits:
            return self.commits[-1]
        return next((c for c in self.commits if c[0] == rev), None)


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None


class HubServer:
    """`with HubServer() as hub:` serves on a free port; `hub.endpoint` is HF_ENDPOINT."""

    def __init__(self, rate: float | None = None) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[Request] = []
        self.rate = rate  # bytes per second for file bodies; None: as fast as possible
        self._httpd: ThreadingHTTPServer | None = None

    # ---- content --------------------------------------------------------------------------------

    def add_folder(self, repo_id: str, folder: Path, *, kind: str = "model", **options: Any) -> str:
        """Publish every file under `folder` as a new commit of `repo_id`; returns the commit hash."""
        files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}
        return self.add_files(repo_id, files, kind=kind, **options)

    def add_files(self, repo_id: str, files: dict[str, bytes], *, kind: str = "model", **options: Any) -> str:
        repo = self.repos.setdefault((kind, repo_id), Repo(kind))
        for key, value in options.items():
            setattr(repo, key, value)
        h = hashlib.sha1(repo_id.encode() + str(len(repo.commits)).encode())
        for name in sorted(files):
            h.update(name.encode() + hashlib.sha256(files[name]).digest())
        sha = h.hexdigest()
        repo.commits.append((sha, dict(files)))
        return sha

    # ---- serving --------------------------------------------------------------------------------

    def __enter__(self) -> HubServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                server._handle(self, body=False)

            def do_GET(self) -> None:
                server._handle(self, body=True)

            def do_POST(self) -> None:
                server._handle(self, body=True)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    @property
    def endpoint(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def _handle(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path, _, query = h.path.partition("?")
        self.requests.append(Request(h.command, path, h.headers.get("Range"), h.headers.get("Authorization")))
        try:
            if h.command == "POST":
                status, headers, data = self._post(path, parse_qs(query), h.headers, _read_body(h))
            else:
                status, headers, data = self._route(path, h.headers)
        except Exception as e:  # noqa: BLE001 - a test server answers, it does not die
            status, headers, data = 500, {}, str(e).encode()
        h.send_response(status)
        headers.setdefault("Content-Length", str(len(data)))
        for key, value in headers.items():
            h.send_header(key, value)
        h.end_headers()
        if body and data:
            self._send(h, data)

    def _send(self, h: BaseHTTPRequestHandler, data: bytes) -> None:
        chunk = 16384 if self.rate is None else max(1024, int(self.rate / 20))
        try:
            for i in range(0, len(data), chunk):
                h.wfile.write(data[i:i + chunk])
                if self.rate:
                    h.wfile.flush()
                    time.sleep(chunk / self.rate)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _route(self, path: str, headers: Any) -> tuple[int, dict[str, str], bytes]:
        m = re.fullmatch(r"/api/(models|datasets)/(.+?)/tree/([^/]+)(?:/(.*))?", path)
        if m:
            return self._tree(m.group(1)[:-1], m.group(2), m.group(3), m.group(4) or "", headers)
        m = re.fullmatch(r"/api/(models|datasets)/(.+?)(?:/revision/([^/]+))?", path)
        if m:
            return self._info(m.group(1)[:-1], m.group(2), m.group(3) or "main", headers)
        m = re.fullmatch(r"/(datasets/)?(.+?)/resolve/([^/]+)/(.+)", path)
        if m:
            return self._file("dataset" if m.group(1) else "model", m.group(2), m.group(3), m.group(4), headers)
        if path in ("/", "/api/health"):
            return 200, {"Content-Type": "text/plain"}, b"ok"
        return 404, {}, b"not found"

    def _repo(self, kind: str, repo_id: str, rev: str,
              headers: Any) -> tuple[Repo | None, Any, tuple[int, dict[str, str], bytes]]:
        repo = self.repos.get((kind, repo_id))
        if repo is None or (repo.private and _token(headers) != repo.owner_token):
            return None, None, _error(404, "RepoNotFound", "Repository not found")
        found = repo.commit(rev)
        if found is None:
            return None, None, _error(404, "RevisionNotFound", "Invalid rev id: " + rev)
        return repo, found, (200, {}, b"")

    def _info(self, kind: str, repo_id: str, rev: str, headers: Any) -> tuple[int, dict[str, str], bytes]:
        repo, found, failure = self._repo(kind, repo_id, rev, headers)
        if repo is None:
            return failure
        sha, files = found
        siblings = []
        for name, data in sorted(files.items()):
            item: dict[str, Any] = {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}
            if name.endswith(LFS_SUFFIXES):
                item["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 130}
            siblings.append(item)
        info: dict[str, Any] = {"id": repo_id, "sha": sha, "private": repo.private, "gated": repo.gated,
                                "siblings": siblings, "usedStorage": sum(len(d) for d in files.values())}
        if repo.parameters is not None:
            info["safetensors"] = {"parameters": {"F32": repo.parameters}, "total": repo.parameters}
        return 200, {"Content-Type": "application/json"}, json.dumps(info).encode()

    def _tree(self, kind: str, repo_id: str, rev: str, under: str, headers: Any) -> tuple[int, dict[str, str], bytes]:
        repo, found, failure = self._repo(kind, repo_id, rev, headers)
        if repo is None:
            return failure
        entries = []
        for name, data in sorted(found[1].items()):
            if under and not name.startswith(under.rstrip("/") + "/"):
                continue
            item: dict[str, Any] = {"type": "file", "path": name, "size": len(data), "oid": git_blob_id(data)}
            if name.endswith(LFS_SUFFIXES):
                item["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 130}
            entries.append(item)
        return 200, {"Content-Type": "application/json"}, json.dumps(entries).encode()

    def _file(self, kind: str, repo_id: str, rev: str, name: str, headers: Any) -> tuple[int, dict[str, str], bytes]:
        repo, found, failure = self._repo(kind, repo_id, rev, headers)
        if repo is None:
            return failure
        if repo.gated:
            token = _token(headers)
            if not token:
                return _error(401, "GatedRepo", "Access to model is restricted. You must be authenticated.")
            if token not in repo.allowed_tokens:
                return _error(403, "GatedRepo", "Access to model is restricted and you are not in the authorized list.")
        sha, files = found
        if name not in files:
            return _error(404, "EntryNotFound", f"{name} does not exist")
        data = files[name]
        out = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if name.endswith(LFS_SUFFIXES):
            etag = hashlib.sha256(data).hexdigest()
            out.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data)), "ETag": f'"{etag}"'})
        else:
            out["ETag"] = f'"{git_blob_id(data)}"'
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", headers.get("Range") or "")
        if wanted:
            start = int(wanted.group(1))
            end = int(wanted.group(2)) if wanted.group(2) else len(data) - 1
            if start >= len(data):
                return 416, {"Content-Range": f"bytes */{len(data)}"}, b""
            out["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return 206, out, data[start:end + 1]
        return 200, out, data

    # ---- writes: what create_repo and upload_folder / create_commit send ----------------------------

    def _post(self, path: str, query: dict[str, list[str]], headers: Any,
              body: bytes) -> tuple[int, dict[str, str], bytes]:
        if path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body))
        if not _token(headers):
            return _error(401, "Unauthorized", "Invalid credentials in Authorization header")
        if path == "/api/repos/create":
            return self._create(json.loads(body), _token(headers))
        m = re.fullmatch(r"/api/(models|datasets)/(.+?)/(preupload|commit)/([^/]+)", path)
        if m is None:
            return 404, {}, b"not found"
        if query.get("create_pr"):
            return _error(400, "BadRequest", "pull requests are not served here")
        kind, repo_id, rev = m.group(1)[:-1], m.group(2), unquote(m.group(4))
        repo, found, failure = self._repo(kind, repo_id, rev, headers)
        if repo is None:
            return failure
        if m.group(3) == "preupload":
            return self._preupload(found[1], json.loads(body))
        return self._commit(repo, repo_id, found[0], body)

    def _create(self, payload: dict[str, Any], token: str) -> tuple[int, dict[str, str], bytes]:
        kind = payload.get("type") or "model"
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        url = f"{self.endpoint}/{'datasets/' if kind == 'dataset' else ''}{repo_id}"
        if (kind, repo_id) in self.repos:
            body = json.dumps({"error": f"You already created this {kind} repo", "url": url}).encode()
            return 409, {"X-Error-Message": f"You already created this {kind} repo",
                         "Content-Type": "application/json"}, body
        private = payload.get("visibility") == "private" or payload.get("private") is True
        sha = self.add_files(repo_id, {".gitattributes": GITATTRIBUTES}, kind=kind, private=private,
                             owner_token=token)
        self.repos[(kind, repo_id)].messages[sha] = "initial commit"
        return 200, {"Content-Type": "application/json"}, json.dumps({"url": url, "name": repo_id}).encode()

    def _validate_yaml(self, payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        import yaml

        content = payload.get("content") or ""
        m = re.match(r"---\r?\n(.*?)\r?\n---", content, re.S)
        errors = []
        try:
            if m and not isinstance(yaml.safe_load(m.group(1)) or {}, dict):
                errors.append({"message": "the metadata is not a mapping"})
        except yaml.YAMLError as e:
            errors.append({"message": f"invalid YAML: {e}"})
        return (400 if errors else 200), {"Content-Type": "application/json"}, json.dumps(
            {"errors": errors, "warnings": []}).encode()

    def _preupload(self, files: dict[str, bytes], payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        answers = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                    "oid": git_blob_id(files[f["path"]]) if f["path"] in files else None} for f in payload["files"]]
        return 200, {"Content-Type": "application/json"}, json.dumps({"files": answers, "commitOid": None}).encode()

    def _commit(self, repo: Repo, repo_id: str, head: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return _error(400, "BadRequest", "the first line must be the commit header")
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, head):
            return _error(412, "PreconditionFailed", "parentCommit is not the head of the branch")
        files = dict(repo.commit(head)[1])
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"]) if value.get("encoding") == "base64" \
                    else value["content"].encode()
            elif key == "deletedFile":
                if value["path"] not in files:
                    return _error(404, "EntryNotFound", "A file with this name doesn't exist: " + value["path"])
                del files[value["path"]]
            elif key == "deletedFolder":
                files = {n: d for n, d in files.items() if not n.startswith(value["path"].rstrip("/") + "/")}
            else:  # lfsFile (preupload never asks for it) or a copy
                return _error(422, "Unprocessable", f"{key} entries are not served here")
        sha = self.add_files(repo_id, files, kind=repo.kind)
        repo.messages[sha] = header.get("summary", "")
        url = f"{self.endpoint}/{'datasets/' if repo.kind == 'dataset' else ''}{repo_id}/commit/{sha}"
        return 200, {"Content-Type": "application/json"}, json.dumps(
            {"success": True, "commitOid": sha, "commitUrl": url, "pullRequestUrl": None}).encode()

    # ---- what the tests check -------------------------------------------------------------------

    def ranges(self, suffix: str) -> list[str | None]:
        """The Range headers of the file GETs whose path ends with `suffix`."""
        return [r.range for r in self.requests if r.method == "GET" and r.path.endswith(suffix)]


def _token(headers: Any) -> str:
    return (headers.get("Authorization") or "").removeprefix("Bearer ").strip()


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        out = b""
        while (size := int(h.rfile.readline().split(b";")[0], 16)) > 0:
            out += h.rfile.read(size)
            h.rfile.readline()
        h.rfile.readline()
        return out
    return h.rfile.read(int(h.headers.get("Content-Length") or 0))


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"error": message}).encode()
    return status, {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}, body


def go_online(monkeypatch: Any, hub: HubServer, token: str | None = None) -> None:
    """This process (and the jobs it starts) talks to `hub`: HF_ENDPOINT, offline switched off and the cache
    of this test's HF_HOME (also in huggingface_hub's constants, read once at its import), and HF_TOKEN when
    given."""
    import huggingface_hub.constants as constants

    from engine.hub.connection import cache_dir

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir()))
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    if token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HF_TOKEN", token)


def tiny_model(folder: Path, *, width: int = 32, layers: int = 1) -> Path:
    """folder/model: a GPT-2 (about 110 KB of safetensors at the defaults) with a BPE tokenizer; the corpus it
    was trained on is folder/corpus.txt."""
    from finetune_helpers import base_model, corpus_and_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    _, tokenizer = corpus_and_tokenizer(folder, 400)
    return base_model("gpt2", tokenizer, folder / "model", width=width, layers=layers)
