"""Policies on one call: retry, time limit, circuit breaker.

The single implementation of each concern, used by tasks of a flow (through
the ``retry``, ``timeout`` and ``circuit`` plugins, which only decide where a
policy applies) and by pipeline stages (:mod:`flowdeco.pipeline`, which
imports no plugin).  Modules: :mod:`.retry` (:class:`Retry`), :mod:`.timeout`
(:class:`TaskTimeout`, the helper-thread and alarm calls), :mod:`.circuit`
(:class:`CircuitBreaker`, :class:`CircuitOpenError`).  Nothing is imported
here, so using one policy loads only its module.
"""
