"""Cases: the list with filters, one case, its video (range requests), overlays, timeline,
instrument usage, report, shares and reviewers' corrections. Every access is audited."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import Field, field_validator, model_validator
from sqlalchemy.exc import IntegrityError

from resources.accounts import Principal
from resources.catalog import CASE_STATUSES, Annotation, Case, CaseShare
from surg_web import perception
from surg_web.bodies import ApiBody, DbCount, DbId, DbInt
from surg_web.media import parse_range, stream_object
from surg_web.security import (
    audit,
    authorised_case,
    ctx,
    current_user,
    iso,
    require_roles,
    visible_case_ids,
)

router = APIRouter(prefix="/api", tags=["cases"], dependencies=[Depends(current_user)])
User = Annotated[Principal, Depends(current_user)]
CaseId = Annotated[str, Path(max_length=32)]
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")


def case_dict(case: Case, summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """A case as the API shows it (no file names exist to show)."""
    out = {
        "id": case.id,
        "status": case.status,
        "failure_reason": case.failure_reason,
        "procedure": case.procedure,
        "owner": case.owner,
        "created_at": iso(case.created_at),
        "updated_at": iso(case.updated_at),
        "duration_s": case.duration_s,
        "width": case.width,
        "height": case.height,
        "fps": case.fps,
        "size_bytes": case.size_bytes,
    }
    if summary is not None:
        out.update(summary)
    return out


@router.get("/cases")
def list_cases(
    request: Request,
    user: User,
    status: Literal[CASE_STATUSES] | None = None,  # type: ignore[valid-type]
    procedure: str | None = Query(None, max_length=64),
    q: str | None = Query(None, max_length=64, description="part of the case id"),
    created_from: dt.date | None = None,
    created_to: dt.date | None = None,
    instrument: str | None = Query(None, max_length=64, description="instrument used"),
    phase: str | None = Query(None, max_length=64, description="phase for the duration filter"),
    min_phase_s: float | None = Query(None, ge=0, allow_inf_nan=False),
    max_phase_s: float | None = Query(None, ge=0, allow_inf_nan=False),
    limit: int = Query(200, ge=1, le=1000),
) -> list[dict[str, Any]]:
    """Cases the caller may see, newest first, with status, phase durations and instruments.

    Filters: status, procedure, part of the id, creation date range, an instrument used, and
    the duration of one phase (``phase`` with ``min_phase_s`` / ``max_phase_s``).
    """
    c = ctx(request)
    allowed = visible_case_ids(c.catalog, user)
    out = []
    for case in c.catalog.list_cases(status=status, limit=5000):
        if allowed is not None and case.id not in allowed:
            continue
        if procedure and case.procedure != procedure:
            continue
        if q and q.lower() not in case.id:
            continue
        created = case.created_at.date()
        if (created_from and created < created_from) or (created_to and created > created_to):
            continue
        summary = perception.case_summary(c.blob_store, case.id)
        if instrument and instrument not in summary["instruments"]:
            continue
        if phase:
            dur = summary["phase_durations_s"].get(phase)
            if dur is None or (min_phase_s is not None and dur < min_phase_s):
                continue
            if max_phase_s is not None and dur > max_phase_s:
                continue
        out.append(case_dict(case, summary))
        if len(out) >= limit:
            break
    audit(request, user.name, "case.list", count=len(out))
    return out


@router.get("/cases/{case_id}")
def get_case(case_id: CaseId, request: Request, user: User) -> dict[str, Any]:
    """One case: facts, status, which outputs exist, who it is shared with."""
    c = ctx(request)
    case = authorised_case(request, user, case_id, "case.view")
    outputs = sorted(
        i.key.rsplit("/", 1)[-1]
        for i in c.blob_store.list_prefix(f"processed-metadata/{case.id}/")
        if "/" not in i.key[len(f"processed-metadata/{case.id}/") :]
    )
    with c.catalog.session() as s:
        shares = [r.user_name for r in s.query(CaseShare).filter(CaseShare.case_id == case.id)]
    vkey = perception.video_key(c.blob_store, case.id)
    return {
        **case_dict(case, perception.case_summary(c.blob_store, case.id)),
        "outputs": outputs,
        "video": vkey.rsplit("/", 1)[-1] if vkey else None,
        "shared_with": shares,
    }


class ShareRequest(ApiBody):
    """The user to share a case with."""

    user: str = Field(min_length=2, max_length=64)


@router.post("/cases/{case_id}/shares", status_code=201)
def share_case(case_id: CaseId, body: ShareRequest, request: Request, user: User) -> dict[str, Any]:
    """Share a case with another user (its owner or an admin)."""
    c = ctx(request)
    case = authorised_case(request, user, case_id, "case.share")
    if user.role != "admin" and case.owner != user.name:
        raise HTTPException(403, "only the case's owner or an admin can share it.")
    target = c.accounts.get_user(body.user) if _NAME_RE.match(body.user) else None
    if target is None:
        raise HTTPException(404, "there is no such user to share with.")
    try:
        with c.catalog.session() as s:
            s.add(CaseShare(case_id=case.id, user_name=target.name, shared_by=user.name))
    except IntegrityError:
        pass  # already shared: sharing is idempotent
    audit(request, user.name, "case.share.granted", case_id=case.id, with_user=target.name)
    return {"case_id": case.id, "shared_with": target.name}


@router.get("/cases/{case_id}/video")
def case_video(
    case_id: CaseId,
    request: Request,
    user: User,
    range_header: Annotated[str | None, Header(alias="range")] = None,
) -> Response:
    """The case's video (de-identified if it exists, else transcoded), with HTTP ranges."""
    c = ctx(request)
    case = authorised_case(request, user, case_id, "video.stream")
    key = perception.video_key(c.blob_store, case.id)
    info = c.blob_store.head(key) if key else None
    if info is None:
        raise HTTPException(404, f"case {case.id} has no processed video yet; wait for analysis.")
    span = parse_range(range_header, info.size)
    headers = {
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, no-store",
        "Content-Disposition": "inline",
    }
    if span is None:
        headers["Content-Length"] = str(info.size)
        body = stream_object(c.blob_store, key, 0, info.size - 1)
        return StreamingResponse(body, 200, headers=headers, media_type="video/mp4")
    start, end = span
    headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
    headers["Content-Length"] = str(end - start + 1)
    body = stream_object(c.blob_store, key, start, end)
    return StreamingResponse(body, 206, headers=headers, media_type="video/mp4")


@router.get("/cases/{case_id}/overlays")
def overlays(
    case_id: CaseId,
    request: Request,
    user: User,
    from_s: float = Query(0.0, ge=0, allow_inf_nan=False),
    to_s: float = Query(60.0, ge=0, allow_inf_nan=False),
) -> dict[str, Any]:
    """Boxes, masks and track ids between two times, with corrections applied (max 10 min)."""
    if to_s < from_s or to_s - from_s > 600:
        raise HTTPException(400, "to_s must be after from_s and at most 600 s later.")
    case = authorised_case(request, user, case_id, "overlays.read")
    c = ctx(request)
    return perception.overlay_window(c.blob_store, c.catalog, case.id, from_s, to_s)


@router.get("/cases/{case_id}/timeline")
def case_timeline(case_id: CaseId, request: Request, user: User) -> dict[str, Any]:
    """Phase segments (corrected if a reviewer did) and video events."""
    case = authorised_case(request, user, case_id, "timeline.read")
    c = ctx(request)
    return {"duration_s": case.duration_s, **perception.timeline(c.blob_store, c.catalog, case.id)}


@router.get("/cases/{case_id}/instruments")
def case_instruments(case_id: CaseId, request: Request, user: User) -> dict[str, Any]:
    """Instrument usage: per class (visible time, tracks, first and last use) and per track."""
    case = authorised_case(request, user, case_id, "instruments.read")
    return perception.instrument_usage(ctx(request).blob_store, case.id)


@router.get("/cases/{case_id}/report")
def case_report(case_id: CaseId, request: Request, user: User) -> dict[str, Any]:
    """``report.json`` and ``analysis.json`` when they exist (null otherwise)."""
    case = authorised_case(request, user, case_id, "report.read")
    store = ctx(request).blob_store
    return {
        "report": perception.read_json(store, case.id, "report"),
        "analysis": perception.read_json(store, case.id, "analysis"),
    }


@router.get("/cases/{case_id}/at")
def case_at(
    case_id: CaseId,
    request: Request,
    user: User,
    t: Annotated[
        float, Query(ge=0, le=86_400, allow_inf_nan=False, description="Seconds from the start.")
    ],
) -> dict[str, Any]:
    """What happens at one moment: phase, visible instruments, ongoing events (from analysis)."""
    from ml_models.analysis import Analysis, state_at

    case = authorised_case(request, user, case_id, "analysis.read")
    raw = perception.read_json(ctx(request).blob_store, case.id, "analysis")
    if raw is None:
        raise HTTPException(404, f"case {case.id} has no analysis yet; wait for the analysis.")
    return state_at(Analysis.model_validate(raw), t)


# -- corrections ---------------------------------------------------------------------------


class BoxTarget(ApiBody):
    """The model box a correction changes: its frame and track (or class and position)."""

    frame_index: DbCount
    track_id: DbInt | None = None
    class_id: DbInt | None = None
    box: list[float] | None = Field(None, min_length=4, max_length=4)


class BoxCorrection(ApiBody):
    """Add, move/resize/relabel (modify), or delete one box on one frame."""

    action: Literal["add", "modify", "delete"]
    box: list[float] | None = Field(None, min_length=4, max_length=4)
    class_id: int | None = Field(None, ge=0, le=1000)
    class_name: str | None = Field(None, min_length=1, max_length=64)
    track_id: DbInt | None = None
    target: BoxTarget | None = None

    @model_validator(mode="after")
    def _complete(self) -> BoxCorrection:
        if self.action in ("add", "modify"):
            if self.box is None or self.class_name is None:
                raise ValueError("add and modify need box and class_name")
            x1, y1, x2, y2 = self.box
            if not (0 <= x1 < x2 and 0 <= y1 < y2 and x2 < 1e5 and y2 < 1e5):
                raise ValueError("box must be [x1, y1, x2, y2] pixels with x1 < x2 and y1 < y2")
        if self.action in ("modify", "delete") and self.target is None:
            raise ValueError("modify and delete need the target box")
        return self


class PhaseSegment(ApiBody):
    """One segment of a corrected phase timeline."""

    phase_id: int | None = Field(None, ge=0, le=100)
    phase_name: str = Field(min_length=1, max_length=64)
    start_s: float = Field(ge=0)
    end_s: float = Field(ge=0)


class PhaseCorrection(ApiBody):
    """The whole corrected timeline (a boundary dragged or a segment relabelled)."""

    segments: list[PhaseSegment] = Field(min_length=1, max_length=2000)

    @field_validator("segments")
    @classmethod
    def _ordered(cls, segments: list[PhaseSegment]) -> list[PhaseSegment]:
        prev_end = 0.0
        for seg in segments:
            if seg.end_s <= seg.start_s:
                raise ValueError("each segment must end after it starts")
            if seg.start_s < prev_end - 1e-6:
                raise ValueError("segments must be in time order without overlap")
            prev_end = seg.end_s
        return segments


class CorrectionRequest(ApiBody):
    """A reviewer's correction: a box on a frame, or the phase timeline."""

    kind: Literal["box", "phase"]
    frame_index: DbCount | None = None
    t_s: float | None = Field(None, ge=0)
    payload: dict[str, Any]
    supersedes_id: DbId | None = None

    @model_validator(mode="after")
    def _valid_payload(self) -> CorrectionRequest:
        if self.kind == "box":
            if self.frame_index is None or self.t_s is None:
                raise ValueError("a box correction needs frame_index and t_s")
            self.payload = BoxCorrection.model_validate(self.payload).model_dump(mode="json")
        else:
            self.payload = PhaseCorrection.model_validate(self.payload).model_dump(mode="json")
        return self


def annotation_dict(a: Annotation) -> dict[str, Any]:
    """A stored annotation as JSON."""
    return {
        "id": a.id,
        "kind": a.kind,
        "frame_index": a.frame_index,
        "t_s": a.t_s,
        "payload": a.payload,
        "author": a.author,
        "source": a.source,
        "supersedes_id": a.supersedes_id,
        "created_at": iso(a.created_at),
    }


@router.get("/cases/{case_id}/annotations")
def list_annotations(case_id: CaseId, request: Request, user: User) -> list[dict[str, Any]]:
    """Every reviewer correction of the case (all versions; ``current`` marks the live ones)."""
    case = authorised_case(request, user, case_id, "annotations.read")
    rows = perception.review_annotations(ctx(request).catalog, case.id)
    live = {a.id for a in perception.current_annotations(rows)}
    return [{**annotation_dict(a), "current": a.id in live} for a in rows]


def _in_vocabulary(
    segments: list[dict[str, Any]], vocabulary: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Corrected segments named in the case's phases, each with that phase's id (a correction
    becomes training data, so a name the phase model does not know, or an id that disagrees
    with the name, is refused rather than stored)."""
    ids = {v["phase_name"]: v["phase_id"] for v in vocabulary}
    out = []
    for seg in segments:
        name = seg["phase_name"]
        if name not in ids:
            raise HTTPException(
                422,
                f"segments: phase {name!r} is not one of this case's phases "
                f"({', '.join(ids)}); pick one of them.",
            )
        if seg.get("phase_id") is not None and seg["phase_id"] != ids[name]:
            raise HTTPException(
                422, f"segments: phase {name!r} has id {ids[name]}, not {seg['phase_id']}."
            )
        out.append({**seg, "phase_id": ids[name]})
    return out


@router.post("/cases/{case_id}/annotations", status_code=201)
def add_annotation(
    case_id: CaseId,
    body: CorrectionRequest,
    request: Request,
    user: Principal = Depends(require_roles("reviewer", "admin")),
) -> dict[str, Any]:
    """Store a reviewer's correction as a new annotation version (author and time recorded)."""
    c = ctx(request)
    case = authorised_case(request, user, case_id, "annotation.create")
    if body.kind == "phase":
        body.payload["segments"] = _in_vocabulary(
            body.payload["segments"], perception.phase_vocabulary(c.blob_store, case.id)
        )
    with c.catalog.session() as s:
        if body.supersedes_id is not None:
            old = s.get(Annotation, body.supersedes_id)
            if old is None or old.case_id != case.id or old.kind != body.kind:
                raise HTTPException(400, "supersedes_id is not a correction of this case's kind.")
            if s.query(Annotation).filter(Annotation.supersedes_id == old.id).first():
                raise HTTPException(
                    409, f"annotation {old.id} was already superseded; reload and edit the latest."
                )
        row = Annotation(
            case_id=case.id,
            kind=body.kind,
            frame_index=body.frame_index,
            t_s=body.t_s,
            payload=body.payload,
            author=user.name,
            source="review",
            supersedes_id=body.supersedes_id,
        )
        s.add(row)
        s.flush()
        out = annotation_dict(row)
    audit(
        request,
        user.name,
        "annotation.saved",
        case_id=case.id,
        annotation_id=out["id"],
        kind=body.kind,
        change=body.payload.get("action", "timeline"),
    )
    return out
