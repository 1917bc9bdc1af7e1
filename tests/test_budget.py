"""The byte budget that bounds what a process's writes hold in memory."""

from __future__ import annotations

import threading

from synctool.backends.budget import ByteBudget


def _wait_for(condition) -> None:
    # Threads here only wait on the budget: each poll lets them run.
    done = threading.Event()
    while not condition():
        done.wait(0.001)


def test_an_oversized_request_waits_for_the_whole_budget_and_goes_alone():
    budget = ByteBudget(10)
    assert budget.take(4) == 4
    got = []
    big = threading.Thread(target=lambda: got.append(budget.take(25)))
    big.start()
    _wait_for(lambda: len(budget._turns) == 1)
    assert got == []  # 6 free is not all of it
    budget.give(4)
    big.join()
    assert got == [10] and budget.free == 0
    budget.give(10)
    assert budget.free == budget.capacity


def test_first_come_first_served():
    # A small request that would fit must not overtake a large one waiting
    # ahead of it, or a stream of small files could starve a large one.
    budget = ByteBudget(10)
    budget.take(8)
    order = []
    large = threading.Thread(target=lambda: (budget.take(5), order.append("large")))
    small = threading.Thread(target=lambda: (budget.take(1), order.append("small")))
    large.start()
    _wait_for(lambda: len(budget._turns) == 1)
    small.start()
    _wait_for(lambda: len(budget._turns) == 2 or order)
    budget.give(8)
    large.join()
    small.join()
    assert order == ["large", "small"]
    assert budget.free == 4
