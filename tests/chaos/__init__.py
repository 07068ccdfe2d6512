"""Crash campaigns: SIGKILL a flowdeco CLI run at random moments and check its promises.

:mod:`chaos.crashlib` is the machinery (shared by ``tests/test_crash_campaign.py``,
``tests/test_state_crash.py`` and the ``campaign.py`` script); nothing here is
collected by pytest.
"""
