"""dimsekit.resources: the soft limit of open files raised toward the hard one (this process's,
put back after each test)."""

from __future__ import annotations

import resource

import pytest

from dimsekit.resources import TARGET, raise_open_files_limit


@pytest.fixture
def low_soft_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    yield hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_low_soft_limit_is_raised_toward_the_hard_one(low_soft_limit):
    hard = low_soft_limit
    expected = TARGET if hard == resource.RLIM_INFINITY else min(hard, TARGET)
    assert raise_open_files_limit() == (256, expected)
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (expected, hard)
    assert raise_open_files_limit() is None  # nothing more to do


def test_a_smaller_target_or_a_select_reactor_leaves_it(low_soft_limit):
    assert raise_open_files_limit(target=200) is None

    class SelectReactor:  # select() cannot watch descriptors past FD_SETSIZE
        pass

    assert raise_open_files_limit(reactor=SelectReactor()) is None
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 256
    assert raise_open_files_limit(target=300) == (256, 300)
