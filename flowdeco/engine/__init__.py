"""The engine: what happens between a collected graph and the run's last report.

- :mod:`.session` -- ``run()``, :class:`Session` (plugin manager lifetime,
  options, collection), run ids;
- :mod:`.scheduler` -- :class:`Run`: the state machine over the per-task
  table (readiness, priority, completion, release);
- :mod:`.setup` -- hooks asked once per run, the per-task plan, the strategy;
- :mod:`.reporting` -- :class:`Reporter`: events to ``flowdeco_report``, signals;
- :mod:`.timers` -- tasks waiting for a delay; :mod:`.ending` -- the run's last outcomes;
- :mod:`.table` -- the per-task columns;
- :mod:`.states` -- task states, message kinds, stop states;
- :mod:`.dispatch` -- how ready tasks reach workers (threads, sync, remote);
- :mod:`.attempt` -- one attempt under its guard and deadline, and its remote form;
- :mod:`.dynamic` -- trigger rules, conditions, mapped tasks;
- :mod:`.views` -- ``RunResult.outcomes`` and ``ctx.upstream`` mappings.

See ``docs/architecture.md``.
"""
