"""The model registry for data scientists: versions, metrics, status; approve or reject."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from pydantic import Field, model_validator

from resources.accounts import Principal
from resources.catalog import ModelVersion
from surg_web.bodies import DB_INT_MAX, ApiBody
from surg_web.security import audit, ctx, current_user, iso, require_roles

router = APIRouter(prefix="/api", tags=["models"], dependencies=[Depends(current_user)])
Decider = Annotated[Principal, Depends(require_roles("data_scientist", "admin"))]


class Decision(ApiBody):
    """Approve or reject a version; a rejection says why."""

    decision: Literal["Approved", "Rejected"]
    reason: str | None = Field(None, max_length=2000)

    @model_validator(mode="after")
    def _reason_for_rejection(self) -> Decision:
        if self.decision == "Rejected" and not (self.reason or "").strip():
            raise ValueError("a rejection needs a reason")
        return self


def version_dict(v: ModelVersion) -> dict[str, Any]:
    """A registry entry as JSON."""
    return {
        "id": v.id,
        "name": v.name,
        "version": v.version,
        "uri": v.uri,
        "metrics": v.metrics or {},
        "status": v.status,
        "reason": v.reason,
        "dataset_version": v.dataset_version,
        "decided_by": v.decided_by,
        "decided_at": iso(v.decided_at),
        "created_at": iso(v.created_at),
    }


@router.get("/models")
def list_models(request: Request, user: Decider) -> list[dict[str, Any]]:
    """Every registered model version, newest first."""
    audit(request, user.name, "model.list")
    return [version_dict(v) for v in ctx(request).registry.versions()]


@router.post("/models/{model_id}/decision")
def decide(
    body: Decision,
    request: Request,
    user: Decider,
    model_id: int = Path(ge=1, le=DB_INT_MAX),
) -> dict[str, Any]:
    """Approve or reject a version (audited); the newest Approved one serves new cases."""
    c = ctx(request)
    with c.catalog.session() as s:
        row = s.get(ModelVersion, model_id)
    if row is None:
        raise HTTPException(404, f"there is no model version {model_id}.")
    action = "model.approve" if body.decision == "Approved" else "model.reject"
    decided = c.registry.decide(row.name, row.version, body.decision, user.name, body.reason)
    audit(request, user.name, action, model=row.name, version=row.version, reason=body.reason)
    return version_dict(decided)
