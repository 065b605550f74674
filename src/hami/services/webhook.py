"""`POST /webhook`: the mutating admission webhook (AdmissionReview v1) for pods.

The decision is `hami.admission.admit`; this module only speaks the AdmissionReview. Pods that request no
managed resource are allowed unchanged; invalid device requests are denied with the field and the rule;
forged `hami.io/*` allocation annotations are removed. The API server appends `?timeout=Ns` to the URL,
which is ignored (we answer in well under a millisecond). Namespaces labelled `hami.io/webhook: ignore`
are excluded by the MutatingWebhookConfiguration's namespaceSelector (the review does not carry
namespace labels); pods with that label are skipped by `admit`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hami.admission import admit
from hami.protocol import admission_review as review
from hami.resources import HamiError, PodRequest
from hami.scheduler.framework import Scheduler
from hami.services.extender import internal_error, json_response
from hami.services.metrics import ServiceMetrics
from hami.vendors.base import Vendor

log = logging.getLogger(__name__)


def known_policies(scheduler: Scheduler) -> Callable[[PodRequest], None]:
    """A check that the pod names only policies the scheduler has (filter would refuse the others)."""
    def check(request: PodRequest) -> None:
        if request.node_policy:
            scheduler.node_scorer(request.node_policy)
        for name in request.device_policy:
            scheduler.device_policy(name)
    return check


def routes(vendors: Sequence[Vendor], scheduler_name: str, metrics: ServiceMetrics | None = None,
           scheduler: Scheduler | None = None) -> list[Route]:
    vendors = tuple(vendors)
    check = known_policies(scheduler) if scheduler is not None else None

    def count(result: str) -> None:
        if metrics is not None:
            metrics.webhook_total.labels(result).inc()

    async def webhook(request: Request) -> Response:
        started = time.perf_counter()
        try:
            req = review.parse_review(await request.body())
        except HamiError as exc:
            return json_response({"error": str(exc)}, 400)
        except Exception:
            return internal_error("webhook")
        pod = req.object
        if req.operation not in ("CREATE", "") or pod is None or req.resource_kind not in ("Pod", ""):
            reply = review.allow(req)
            count("unchanged")
        else:
            try:
                ops = admit(pod, vendors, scheduler_name, check)
            except HamiError as exc:
                reply = review.deny(req, f"hami: {exc}")
                count("denied")
            except Exception:
                # A bug must not let a pod through unchecked: deny, say so, log the trace.
                log.exception("webhook: admitting %s failed", req.uid)
                reply = review.deny(req, "hami: internal error while checking this pod; see the scheduler log",
                                    500)
                count("error")
            else:
                reply = review.allow(req, ops)
                count("mutated" if ops else "unchanged")
        if metrics is not None:
            metrics.webhook_seconds.observe(time.perf_counter() - started)
        return json_response(reply)

    return [Route("/webhook", webhook, methods=["POST"])]
