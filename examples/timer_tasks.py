"""Timer tasks: delays, intervals and polling (the seed's timer_tasks demo).

Four patterns, all in one flow (the delays are small so the demo takes about
a tenth of a second; real flows use seconds or minutes):

1. **Delayed notification**: ``send_email`` waits ``delay=`` seconds once it
   is ready.  The wait holds no worker: other tasks run meanwhile.
2. **Health monitor**: ``check_health`` runs ``every=`` seconds, ``times=``
   times, at a fixed rate; ``ctx.iteration`` is 1, 2, ...  Its result is the
   list of its iteration results, which ``health_report`` receives once the
   last check is done.
3. **Coordinated batch**: three batches are released at staggered delays
   and ``merge_batches`` joins them when the last one is in.
4. **Multi-timer coordination**: a fast and a slow ticker run side by side;
   ``coordinator`` starts when both have finished.  ``job_status`` polls a
   job every few milliseconds ``until=`` it reports done (periodic status
   updates).

Run it::

    python -m flowdeco examples/timer_tasks.py --no-state

In tests, ``flowdeco.run(..., clock=FakeClock())`` runs the same flow
instantly: every wait is on the run's clock.
"""

from flowdeco import task

# -- 1. delayed notification


@task(delay=0.05)
def send_email(ctx):
    ctx.log.info("email sent", to="ops@example.com")
    return "Email sent"


# -- 2. health monitor


@task(every=0.02, times=5)
def check_health(ctx):
    status = {"iteration": ctx.iteration, "healthy": True, "latency_ms": 10 + ctx.iteration}
    ctx.log.info("health check", **status)
    return status


@task
def health_report(check_health):
    return {
        "checks": len(check_health),
        "healthy": all(c["healthy"] for c in check_health),
        "worst_latency_ms": max(c["latency_ms"] for c in check_health),
    }


# -- 3. coordinated batch


@task(delay=0.01)
def batch_a():
    return list(range(0, 5))


@task(delay=0.02)
def batch_b():
    return list(range(5, 10))


@task(delay=0.03)
def batch_c():
    return list(range(10, 15))


@task
def merge_batches(ctx, batch_a, batch_b, batch_c):
    merged = batch_a + batch_b + batch_c
    ctx.log.info("batches merged", items=len(merged))
    return {"items": len(merged), "total": sum(merged)}


# -- 4. multi-timer coordination and periodic status updates


@task(every=0.01, times=6)
def fast_ticker(ctx):
    return ctx.iteration


@task(every=0.03, times=3)
def slow_ticker(ctx):
    return ctx.iteration * 10


def job_done(status):
    """``until=`` predicate: stop polling once the job reports done."""
    return status["state"] == "done"


@task(every=0.01, until=job_done)
def job_status(ctx):
    progress = min(100, 25 * ctx.iteration)
    return {"progress": progress, "state": "done" if progress == 100 else "running"}


@task
def coordinator(fast_ticker, slow_ticker, job_status):
    return {
        "fast_ticks": len(fast_ticker),
        "slow_ticks": len(slow_ticker),
        "job_polls": len(job_status),
        "job_state": job_status[-1]["state"],
    }
