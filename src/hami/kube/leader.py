"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

Only the leader decides (filter, bind, preempt); followers keep their informers warm so a failover needs
no re-list. Expiry is judged by our own clock from when we last saw the lease change (not by the
holder's timestamps), so clock skew between replicas cannot make two of them leader; a leader that has
not renewed within `renew_deadline_s` steps down before its lease can expire for the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hami.kube.api import ApiError, KubeApi, KubeObject

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    namespace: str
    name: str = "hami-scheduler"
    identity: str = ""
    lease_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_s: float = 2.0


def _micro_time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, api: KubeApi, config: LeaseConfig,
                 on_change: Callable[[bool], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not config.identity:
            raise ValueError("leader election needs an identity")
        self.api = api
        self.config = config
        self.on_change = on_change
        self.clock = clock
        self.is_leader = False
        self.holder = ""
        self._observed: tuple[str, float] | None = None  # (resourceVersion, when we saw it)
        self._last_renew = 0.0

    def _set(self, leader: bool) -> None:
        if leader != self.is_leader:
            self.is_leader = leader
            log.info("%s %s leadership of lease %s/%s", self.config.identity,
                     "acquired" if leader else "lost", self.config.namespace, self.config.name)
            if self.on_change is not None:
                self.on_change(leader)

    def step_down(self) -> None:
        """Stop deciding now (the renewing task died): the Lease lapses and another replica takes over."""
        self._set(False)

    async def run(self) -> None:
        while True:
            try:
                await self.try_acquire_or_renew()
            except ApiError as exc:
                log.warning("lease %s: %s", self.config.name, exc)
            if self.is_leader and self.clock() - self._last_renew > self.config.renew_deadline_s:
                self._set(False)
            await asyncio.sleep(self.config.retry_s)

    def _spec(self, transitions: int, acquired: str) -> dict[str, Any]:
        now = _micro_time(datetime.now(UTC))
        return {"holderIdentity": self.config.identity, "leaseDurationSeconds": int(self.config.lease_s),
                "acquireTime": acquired or now, "renewTime": now, "leaseTransitions": transitions}

    async def try_acquire_or_renew(self) -> bool:
        cfg = self.config
        try:
            lease = await self.api.get("leases", cfg.name, namespace=cfg.namespace)
        except ApiError as exc:
            if exc.status != 404:
                raise
            body: KubeObject = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                "metadata": {"name": cfg.name, "namespace": cfg.namespace},
                                "spec": self._spec(0, "")}
            try:
                await self.api.create("leases", body, namespace=cfg.namespace)
            except ApiError as create_exc:
                if create_exc.status == 409:
                    return False  # someone else created it first; look again next round
                raise
            self._renewed()
            return True

        spec = lease.get("spec") or {}
        meta = lease.get("metadata") or {}
        holder = spec.get("holderIdentity") or ""
        rv = str(meta.get("resourceVersion", ""))
        now = self.clock()
        if self._observed is None or self._observed[0] != rv:
            self._observed = (rv, now)
        self.holder = holder
        duration = float(spec.get("leaseDurationSeconds") or cfg.lease_s)
        expired = now - self._observed[1] > duration
        if holder and holder != cfg.identity and not expired:
            self._set(False)
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        acquired = spec.get("acquireTime") or ""
        if holder != cfg.identity:
            transitions += 1
            acquired = ""
        lease["spec"] = self._spec(transitions, acquired)
        try:
            await self.api.replace("leases", cfg.name, lease, namespace=cfg.namespace)
        except ApiError as exc:
            if exc.status == 409:
                return self.is_leader and self.clock() - self._last_renew <= cfg.renew_deadline_s
            raise
        self._renewed()
        return True

    def _renewed(self) -> None:
        self._last_renew = self.clock()
        self.holder = self.config.identity
        self._set(True)

    async def release(self) -> None:
        """Give the lease up on shutdown so a follower takes over at once instead of after expiry."""
        if not self.is_leader:
            return
        cfg = self.config
        self._set(False)
        try:
            lease = await self.api.get("leases", cfg.name, namespace=cfg.namespace)
            if (lease.get("spec") or {}).get("holderIdentity") != cfg.identity:
                return
            lease["spec"] = {**lease["spec"], "holderIdentity": None, "leaseDurationSeconds": 1,
                             "renewTime": _micro_time(datetime.now(UTC))}
            await self.api.replace("leases", cfg.name, lease, namespace=cfg.namespace)
        except ApiError as exc:
            log.warning("could not release lease %s: %s", cfg.name, exc)
