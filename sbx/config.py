"""Server settings: one object, read from arguments, then ``SBX_*`` variables."""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SBX_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 3000
    data_dir: Path = Path("/var/lib/sbx")
    # Public base URL clients use for the API and the gateway (same port).
    public_url: str | None = None
    # Address pool for sandboxes: one /30 per sandbox (host side .1, sandbox .2).
    # Two servers on one host need distinct pools.
    subnet: str = "10.231.0.0/16"
    runsc: str = "runsc"
    # systrap is gVisor's default; ptrace spawns shells much faster on nested VMs.
    platform: str = "systrap"
    envd_port: int = 49983
    envd_ready_timeout_s: float = 30.0
    default_disk_mib: int = 2048
    # Disks of default_disk_mib made ahead (sparse, a loop device each):
    # a create takes one instead of a mkfs and a mount.
    spare_disks: int = 1
    # Sandboxes created ahead (runsc create: processes, cgroups, seccomp,
    # root mount) and not yet restored, for the shapes of the last creates:
    # a create from a template snapshot only loads the image into one.
    # ~25 MiB of host memory, a netns, an address and a disk each.
    spare_runtimes: int = 2
    reconcile_interval_s: float = 30.0
    # Compress snapshot images (flate, best speed): smaller on disk, slower
    # to pause and resume. See docs/benchmarks.md for the trade-off.
    snapshot_compress: bool = False
    # Template snapshots made at start, as "VCPUxMEMORY_MIB": seed 000's
    # smallest sandbox and the base template's own size.
    prewarm_snapshots: list[str] = Field(default_factory=lambda: ["1x512", "2x1024"])
    # Warm pool of the base template: sandboxes kept restored and idle per
    # size ("<vcpu>x<memory_mib>": count), claimed by creates of that size.
    warm_pool: dict[str, int] = Field(default_factory=lambda: {"1x512": 1})
    # The `code-interpreter-v1` template (E2B's Code Interpreter SDKs'
    # default): built after `base` on first start (minutes), then its
    # snapshot of 2 vCPU / 1024 MiB with the Python kernel warm.
    code_interpreter: bool = True
    # Bound on the pool's memory (its members' memory_mib plus headroom).
    warm_pool_max_mib: int = 4096
    timeout_check_interval_s: float = 1.0
    # How often running time and guardrail checks are charged to wallets
    # (and empty enforced wallets pause their organisation's sandboxes).
    meter_interval_s: float = 15.0
    # How often audit entries past their retention are deleted.
    audit_purge_interval_s: float = 3600.0
    # Memory given to gVisor on the host beyond memory_mib: the sentry, the
    # gofer and the reaction time of the in-sandbox memory guard.
    memory_headroom_mib: int = 256
    # A cluster never places more on a node than its capacity times this
    # (memory with headroom, vCPUs); 1.0: no overcommit.
    overcommit: float = 1.0
    # The store: None for DATA_DIR/sbx.db (SQLite), or a database URL such
    # as postgresql+asyncpg://USER:PASSWORD@HOST/DB. It may hold a password:
    # show it only through sbx.store.db.masked.
    database_url: str | None = Field(default=None)
    # Where template root filesystems live (default DATA_DIR/templates); tests
    # point several data dirs at one cache to build `base` once.
    templates_path: Path | None = None
    # Where pause snapshots go (default DATA_DIR/snapshots); a cluster's
    # nodes share one (NFS, CephFS, EFS) so a paused sandbox resumes anywhere.
    snapshot_dir: Path | None = None
    # Egress: the resolver sandboxes' allowed names are forwarded to
    # ("ip" or "ip:port"; default: the first nameserver of /etc/resolv.conf).
    egress_upstream_dns: str | None = None
    # A PEM file of extra CAs trusted (besides the system store) when the
    # proxy intercepts TLS and connects to the real server.
    egress_upstream_ca: Path | None = None
    # Ports of the node's egress resolver and proxy (0: any free port).
    egress_dns_port: int = 0
    egress_proxy_port: int = 0
    # Extra ranges treated like private ones (comma separated CIDRs); the
    # networks of the host's default-route interface always are.
    egress_private_extra: str = ""
    # Template builds: the time a build may take unless the request asks for
    # less (at most build_max_timeout_s), the disk one step's layer may
    # write, the size of an uploaded build context (compressed), and the
    # disk the layer cache is pruned to after each build.
    build_timeout_s: int = 1800
    build_max_timeout_s: int = 7200
    build_max_layer_mib: int = 10240
    build_max_context_mib: int = 512
    layer_cache_mib: int = 20480

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, v: str) -> str:
        net = ipaddress.ip_network(v, strict=True)
        if net.version != 4 or net.prefixlen > 28:
            raise ValueError("subnet must be an IPv4 network of /28 or larger")
        return str(net)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, v: str | None) -> str | None:
        # A URL without a driver names the async one sbx ships with. Nothing
        # is refused here: a validation error would print the password.
        for plain, full in (("postgresql://", "postgresql+asyncpg://"),
                            ("postgres://", "postgresql+asyncpg://"),
                            ("sqlite://", "sqlite+aiosqlite://")):
            if v is not None and v.startswith(plain):
                return full + v[len(plain):]
        return v

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'sbx.db'}"

    @property
    def node_tag(self) -> str:
        """Three characters that name this server's host resources (netns,
        veth, nft table, runsc root), so two data dirs never touch each
        other's sandboxes."""
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).digest()
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
        return "".join(alphabet[b % 36] for b in digest[:3])

    @property
    def run_dir(self) -> Path:
        # Under /run (tmpfs): runsc state that must not outlive a host reboot.
        return Path("/run/sbx") / self.node_tag

    @property
    def templates_dir(self) -> Path:
        return self.templates_path or self.data_dir / "templates"

    @property
    def custom_templates_dir(self) -> Path:
        """Templates built from Dockerfiles: always this server's own (the
        templates_path cache is for the built-in one)."""
        return self.data_dir / "templates"

    @property
    def snapshots_dir(self) -> Path:
        """Pause snapshots: in a cluster, storage every node reads (so a
        paused sandbox resumes on any node)."""
        return self.snapshot_dir or self.data_dir / "snapshots"

    @property
    def sandboxes_dir(self) -> Path:
        return self.data_dir / "sandboxes"
