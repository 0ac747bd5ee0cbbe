"""A cluster's nodes: `/internal/nodes/...` for the nodes themselves
(register with a join token, heartbeat and send egress audit with their
node key) and `/admin/nodes` for operators (an admin key). Served by
`sbx api`; `sbx server` has one node inside it and answers 404 here.
Errors are seed 002's `{"code", "message"}`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from sbx.api.deps import AdminCaller, api_key, platform
from sbx.core.cluster import Cluster, NodeView, Registration
from sbx.core.errors import NotFound, Unauthorized
from sbx.shared.audit import AuditEvent

router = APIRouter(tags=["nodes"])

NODE_ID = r"^[a-z0-9][a-z0-9-]{0,39}$"


class RegisterNode(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    node_id: Annotated[str, Field(pattern=NODE_ID)]
    url: Annotated[str, Field(min_length=8, max_length=255, pattern=r"^https?://")]
    subnet: Annotated[str, Field(min_length=9, max_length=43)]
    vcpu_total: Annotated[int, Field(ge=1, le=4096)]
    memory_mib_total: Annotated[int, Field(ge=256, le=64 * 1024 * 1024)]
    disk_mib_total: Annotated[int, Field(ge=256)]


class NodeCredentials(BaseModel):
    node_id: str
    node_key: str
    control_key: str


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # What the node has ready (template snapshots, spare runtime shapes),
    # for placement.
    info: dict[str, Any] = Field(default_factory=dict)


class AuditBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The node's own events, validated as the shared dataclass they are.
    events: Annotated[list[AuditEvent], Field(max_length=5000)]


class Ok(BaseModel):
    ok: bool = True


class NodeOut(BaseModel):
    id: str
    address: str
    subnet: str
    state: str
    vcpu_total: int
    vcpu_reserved: int
    memory_mib_total: int
    memory_mib_reserved: int
    disk_mib_total: int
    sandboxes: list[str]


def _cluster(request: Request) -> Cluster:
    cluster = platform(request).cluster
    if cluster is None:
        raise NotFound("this server is not a cluster's control plane (see `sbx api`)")
    return cluster


def _out(v: NodeView) -> NodeOut:
    return NodeOut(id=v.id, address=v.url, subnet=v.subnet, state=v.state,
                   vcpu_total=v.vcpu_total, vcpu_reserved=v.vcpu_reserved,
                   memory_mib_total=v.memory_mib_total,
                   memory_mib_reserved=v.memory_mib_reserved,
                   disk_mib_total=v.disk_mib_total, sandboxes=v.sandboxes)


@router.post("/internal/nodes/register")
async def register(request: Request, body: RegisterNode) -> NodeCredentials:
    """A node joins (or joins again after a restart: same id, new keys)."""
    token = api_key(request)
    if token is None:
        raise Unauthorized("a join token is needed (Authorization: Bearer sbxjoin_…)")
    creds = await _cluster(request).register(token, Registration(
        body.node_id, body.url, body.subnet, body.vcpu_total, body.memory_mib_total,
        body.disk_mib_total))
    return NodeCredentials(node_id=creds.node_id, node_key=creds.node_key,
                           control_key=creds.control_key)


@router.post("/internal/nodes/{node_id}/heartbeat")
async def heartbeat(request: Request, node_id: str, body: Heartbeat) -> Ok:
    cluster = _cluster(request)
    await cluster.authenticate_node(node_id, api_key(request))
    await cluster.heartbeat(node_id, body.info)
    return Ok()


@router.post("/internal/nodes/{node_id}/audit")
async def audit(request: Request, node_id: str, body: AuditBatch) -> Ok:
    """The node's egress audit events, into the control plane's writer."""
    p = platform(request)
    await _cluster(request).authenticate_node(node_id, api_key(request))
    for event in body.events:
        p.audit.submit(event)
    return Ok()


@router.get("/admin/nodes")
async def list_nodes(request: Request, caller: AdminCaller) -> list[NodeOut]:
    return [_out(v) for v in await _cluster(request).views()]


@router.post("/admin/nodes/{node_id}/drain")
async def drain(request: Request, node_id: str, caller: AdminCaller) -> NodeOut:
    """No new sandbox goes there; those it holds stay until they end or move
    (a paused one resumes on another node)."""
    return _out(await _cluster(request).drain(node_id, True))


@router.post("/admin/nodes/{node_id}/undrain")
async def undrain(request: Request, node_id: str, caller: AdminCaller) -> NodeOut:
    return _out(await _cluster(request).drain(node_id, False))
