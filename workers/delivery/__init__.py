"""The deliverer: sends due events to callbacks, signed, and moves each watch on.

Three stages, composed by :class:`~workers.delivery.deliverer.Deliverer`:

- **claim** (:mod:`workers.delivery.claim`): a :class:`~workers.pump.Pump` keeps a local
  queue of jobs filled -- first with the events this worker's poller just created (offered
  with their watches and bodies, so they are claimed without being read back), then with
  whatever is due in the schedule (retries, other workers' fan-outs, work of a worker that
  died). Clip links that are getting old are refreshed first (:mod:`workers.delivery.links`).
- **send** (:mod:`workers.delivery.send`): lanes -- RELAY_DELIVERY_CONCURRENCY coroutines --
  take the jobs one at a time each, sign and POST the body, and classify the outcome. Jobs
  wait in one queue per callback origin (:mod:`workers.delivery.origins`): a lane takes the
  next job of the next origin with fewer than RELAY_ORIGIN_CONCURRENCY attempts in flight,
  round robin; the claims of jobs a full, slow origin would not start within a second go
  back to the schedule (not an attempt). An origin whose circuit is open
  (:mod:`workers.delivery.breaker`, per worker) gets its attempts recorded ``circuit open``
  without a connection.
- **settle** (:mod:`workers.delivery.settle`): a flusher records the outcomes in batches, so
  the cost per webhook is one HTTP request plus a share of two script calls.

A queued job holds a claim whose lease must outlast its attempt: a lane renews a claim that is
getting old before it sends, and otherwise checks that it still holds (the claim gate,
:mod:`workers.delivery.gate`: one ``ZMSCORE`` for the lanes starting together); a job whose
watch was deleted or that another worker has taken over meanwhile is skipped. Outcomes are
recorded as they arrive, also during a stop's grace.

Outcome of an attempt (SPEC.md "Delivery"): any 2xx is success; 410 disables the watch;
everything else (3xx, 4xx, 5xx, timeouts, refused connections, TLS and DNS errors, a callback
the SSRF policy refuses) is retried on RELAY_RETRY_SCHEDULE with +-20 % jitter, and a 429 or
503 with Retry-After waits at least that long (capped at an hour). When the schedule is
exhausted the watch is ``failed``.
"""

from __future__ import annotations

from workers.delivery.deliverer import Deliverer

__all__ = ["Deliverer"]
