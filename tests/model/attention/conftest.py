import pytest


@pytest.fixture
def block_calls(monkeypatch):
    """`block_calls(schedule)` watches a schedule module (blockwise, ring) and returns the list that
    collects the mask kind of every block-kernel call it makes."""
    calls = []

    def watch(schedule):
        attend_block = schedule.attend_block

        def counted(q, k, v, mask, scale):
            calls.append(mask.kind)
            return attend_block(q, k, v, mask, scale)

        monkeypatch.setattr(schedule, "attend_block", counted)
        return calls

    return watch
