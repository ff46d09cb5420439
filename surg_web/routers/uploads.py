"""Resumable multipart upload API (``resources.uploads`` does the work) and the local part
endpoint that plays S3's role when the lake is a folder."""

from __future__ import annotations

import tempfile
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import Field
from starlette.requests import ClientDisconnect

from ml_models.errors import InputError
from resources.accounts import Principal
from resources.catalog import Upload
from resources.uploads import UploadConflict, UploadService, UploadState
from surg_web.bodies import DB_INT_MAX, ApiBody
from surg_web.media import BLOCK, parse_range, stream_object
from surg_web.security import audit, ctx, current_user, require_roles

router = APIRouter(prefix="/api", tags=["uploads"], dependencies=[Depends(current_user)])
blob = APIRouter(tags=["uploads"])
UploadId = Annotated[str, Path(max_length=64)]
Uploader = Annotated[Principal, Depends(require_roles("surgeon", "admin"))]
# More part URLs than this are not listed up front; the client asks per part.
_LIST_URLS_UP_TO = 1000


class CreateUpload(ApiBody):
    """What the browser knows about the file; the name is used for its extension only."""

    name: str = Field(min_length=1, max_length=1024)
    size: int = Field(gt=0, le=DB_INT_MAX)
    type: str | None = Field(None, max_length=128)
    sha256: str | None = Field(None, min_length=64, max_length=64)
    procedure: str | None = Field(None, max_length=64)
    part_size: int | None = Field(
        None, gt=0, le=DB_INT_MAX, description="the client's part size, if fixed"
    )


class PartETag(ApiBody):
    """One part as the client kept it from the PUT response."""

    part_number: int = Field(ge=1, le=10_000)
    etag: str = Field(max_length=128)


class CompleteUpload(ApiBody):
    """Every part and, optionally, the whole file's sha256."""

    parts: list[PartETag] = Field(min_length=1, max_length=10_000)
    sha256: str | None = Field(None, min_length=64, max_length=64)


def _own_upload(request: Request, user: Principal, upload_id: str) -> Upload:
    upload = ctx(request).uploads.get(upload_id)
    if upload is None or (user.role != "admin" and upload.created_by != user.name):
        raise HTTPException(404, f"upload {upload_id[:64]} does not exist or is not yours.")
    return upload


def _urls(request: Request, service: UploadService, upload_id: str, numbers: list[int]) -> list:
    if len(numbers) > _LIST_URLS_UP_TO:
        return []
    base = str(request.base_url)
    out = []
    for n in numbers:
        url, expires = service.part_url(upload_id, n, base)
        out.append({"part_number": n, "url": url, "expires": expires})
    return out


def _state_dict(state: UploadState) -> dict[str, Any]:
    return {
        "upload_id": state.upload_id,
        "case_id": state.case_id,
        "status": state.status,
        "size": state.size,
        "part_size": state.part_size,
        "part_count": state.part_count,
        "parts": [p.as_dict() for p in state.parts],
        "missing": state.missing if state.status == "open" else [],
    }


@router.post("/uploads", status_code=201)
def create_upload(body: CreateUpload, request: Request, user: Uploader) -> dict[str, Any]:
    """Create the case (``uploading``) and the upload; returns part size and signed part URLs."""
    service = ctx(request).uploads
    try:
        upload = service.create(
            body.name, body.size, body.type, user.name, body.sha256, body.procedure, body.part_size
        )
    except InputError:
        audit(request, user.name, "upload.create", "refused")
        raise
    audit(request, user.name, "upload.create", case_id=upload.case_id, size=body.size)
    state = service.state(upload.id)
    return {
        **_state_dict(state),
        "part_urls": _urls(request, service, upload.id, state.missing),
        "url_ttl_s": service.url_ttl_s,
    }


@router.get("/uploads/{upload_id}")
def upload_state(upload_id: UploadId, request: Request, user: Uploader) -> dict[str, Any]:
    """Parts received so far and fresh URLs for the missing ones (to resume)."""
    upload = _own_upload(request, user, upload_id)
    service = ctx(request).uploads
    state = service.state(upload.id)
    audit(request, user.name, "upload.status", case_id=upload.case_id)
    urls = _urls(request, service, upload.id, state.missing) if state.status == "open" else []
    return {**_state_dict(state), "part_urls": urls}


@router.get("/uploads/{upload_id}/parts/{part_number}")
def sign_part(
    upload_id: UploadId,
    request: Request,
    user: Uploader,
    part_number: int = Path(ge=1, le=10_000),
) -> dict[str, Any]:
    """A fresh signed URL for one part."""
    upload = _own_upload(request, user, upload_id)
    url, expires = ctx(request).uploads.part_url(upload.id, part_number, str(request.base_url))
    return {"part_number": part_number, "url": url, "expires": expires}


@router.post("/uploads/{upload_id}/complete")
def complete_upload(
    upload_id: UploadId, body: CompleteUpload, request: Request, user: Uploader
) -> dict[str, Any]:
    """Verify the parts (and sha256), place the video, queue the case for analysis."""
    upload = _own_upload(request, user, upload_id)
    try:
        case = ctx(request).uploads.complete(
            upload.id, [p.model_dump() for p in body.parts], body.sha256
        )
    except UploadConflict as exc:
        audit(request, user.name, "upload.complete", "refused", upload.case_id)
        raise HTTPException(409, str(exc)) from None
    except InputError as exc:
        audit(request, user.name, "upload.complete", "refused", upload.case_id, why=str(exc)[:200])
        raise
    audit(request, user.name, "upload.complete", case_id=case.id, size=case.size_bytes)
    return {"case_id": case.id, "status": case.status, "upload_id": upload.id}


@router.delete("/uploads/{upload_id}")
def abort_upload(upload_id: UploadId, request: Request, user: Uploader) -> dict[str, Any]:
    """Cancel an upload: parts, upload and the empty case are removed."""
    upload = _own_upload(request, user, upload_id)
    case_id = ctx(request).uploads.abort(upload.id)
    audit(request, user.name, "upload.abort", case_id=case_id)
    return {"upload_id": upload.id, "status": "aborted"}


async def _audit_async(request: Request, upload: Upload, outcome: str, **detail: Any) -> None:
    # Catalog writes may wait on a database lock: keep them off the event loop.
    def write() -> None:
        actor = upload.created_by or "unknown"
        audit(request, actor, "upload.part", outcome, upload.case_id, **detail)

    await anyio.to_thread.run_sync(write)


@blob.put("/blob/{key:path}", include_in_schema=False)
async def put_part(
    key: str,
    request: Request,
    method: str = Query("PUT", max_length=8),
    expires: str = Query("", max_length=16),
    signature: str = Query("", max_length=128),
) -> Response:
    """Receive one part at a signed URL (local mode): the signature is the credential."""
    service = ctx(request).uploads
    if method != "PUT" or not service.verify_part_signature(key, expires, signature):
        raise HTTPException(401, "the part URL's signature is invalid or expired; get a new one.")
    parsed = service.parse_part_key(key)
    assert parsed is not None
    upload = await anyio.to_thread.run_sync(service.get, parsed[0])
    if upload is None:
        raise HTTPException(404, "the upload does not exist (it was completed or cancelled).")
    n = parsed[1]
    if upload.status != "open" or not 1 <= n <= service.part_count(upload):
        raise HTTPException(400, f"upload {upload.id} takes no part {n} now; start a new upload.")
    expected = service.expected_part_size(upload, n)
    # The body is spooled (memory up to 1 MiB, then a temporary file) and refused as soon as it
    # exceeds the part's size; the store write then runs in a worker thread.
    with tempfile.SpooledTemporaryFile(max_size=1024 * 1024) as spool:
        received = 0
        try:
            async for block in request.stream():
                received += len(block)
                if received > expected:
                    await _audit_async(request, upload, "refused")
                    raise HTTPException(
                        413, f"part {n} is over its {expected} bytes; send exactly its bytes."
                    )
                spool.write(block)
        except ClientDisconnect:
            # The browser went away mid-part (reload, lost network): nothing is stored, and the
            # resuming client sends this part again.
            return Response(status_code=400)
        spool.seek(0)
        blocks = iter(lambda: spool.read(BLOCK), b"")
        try:
            part = await anyio.to_thread.run_sync(service.receive_part, key, blocks)
        except InputError as exc:
            await _audit_async(request, upload, "refused")
            raise HTTPException(400, str(exc)) from None
        except LookupError:
            raise HTTPException(404, "the upload does not exist (it was cancelled).") from None
    await _audit_async(request, upload, "ok", part=part.part_number)
    return Response(status_code=200, headers={"ETag": part.etag})


@blob.get("/blob/{key:path}", include_in_schema=False)
def get_blob(
    key: str,
    request: Request,
    method: str = Query("GET", max_length=8),
    expires: str = Query("", max_length=16),
    signature: str = Query("", max_length=128),
) -> Response:
    """Serve an object at a presigned local URL (``LocalBlobStore.presigned_url``), with ranges."""
    store = ctx(request).blob_store
    verify = getattr(store, "verify_presigned", None)
    try:
        ok = method == "GET" and verify is not None and verify(key, "GET", int(expires), signature)
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise HTTPException(401, "the URL's signature is invalid or expired; ask for a new one.")
    info = store.head(key)
    if info is None:
        raise HTTPException(404, "there is no such object.")
    audit(request, "presigned-url", "blob.read", case_id=_case_of_key(key))
    span = parse_range(request.headers.get("range"), info.size) if info.size else None
    start, end = span or (0, max(0, info.size - 1))
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start + 1 if info.size else 0)}
    if span:
        headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
    body = stream_object(store, key, start, end) if info.size else iter([b""])
    return StreamingResponse(body, 206 if span else 200, headers=headers)


def _case_of_key(key: str) -> str | None:
    parts = key.split("/")
    return parts[1] if len(parts) > 2 and parts[1].startswith("c") and len(parts[1]) == 17 else None
