"""Quickstart: the first flow to run.

Every ``@task`` function of this module is a task.  flowdeco collects them and
derives the graph from their parameters:

- ``greet(name="world")``: ``name`` names no task, so it is a *run parameter*;
  its default is used unless you pass ``--param name=...``.
- ``count_letters(greet)`` and ``shout(greet)``: a parameter named after a task
  receives that task's result.  Both depend only on ``greet``, so they run in
  parallel.
- ``announce`` uses ``after=`` to run once ``greet`` is done without taking its
  result; ``ctx`` receives the run's Context (``ctx.log``, ``ctx.run_id``).
- ``summary`` joins the parallel pair and returns a small dict.

Run it::

    python -m flowdeco examples/quickstart.py --no-state
    python -m flowdeco examples/quickstart.py --no-state --param name=Ada
    python -m flowdeco examples/quickstart.py --graph mermaid
"""

from flowdeco import task


@task
def greet(ctx, name="world"):
    message = f"Hello, {name}!"
    ctx.log.info("greeting", message=message)
    return message


@task(after=[greet])
def announce(ctx):
    ctx.log.info("greeting is ready", run=ctx.run_id)


@task
def count_letters(greet):
    return sum(c.isalpha() for c in greet)


@task
def shout(greet):
    return greet.upper()


@task
def summary(ctx, greet, count_letters, shout):
    ctx.log.info("summary", message=greet, letters=count_letters)
    return {"message": greet, "letters": count_letters, "shout": shout}
