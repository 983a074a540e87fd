"""The collector settings a serving gateway runs with: full and middle passes freeze their survivors, and full
passes thaw now and then."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import gc, weakref
    from gateway.http.app import FreezeSurvivors, settle_garbage_collector

    class Node:
        pass

    settle_garbage_collector()
    hook = next(cb for cb in gc.callbacks if isinstance(cb, FreezeSurvivors))
    a, b = Node(), Node()
    a.other, b.other = b, a  # a reference cycle, alive through a full pass: frozen after it
    gone = weakref.ref(a)
    gc.collect()
    assert gc.get_freeze_count() > 0 and gc.get_count()[2] == 0, "a full pass leaves its survivors frozen"
    del a, b  # now garbage that only a collection of the frozen objects can reclaim
    passes_before_thaw = hook.thaw_every - hook.passes % hook.thaw_every - 1
    for _ in range(passes_before_thaw):
        gc.collect()
    assert gone() is not None, "frozen cycles wait for the thawing pass"
    gc.collect()  # the thaw_every-th full pass scans everything
    assert gone() is None, "the thawing pass collects cycles among frozen objects"
    young = [Node() for _ in range(100)]
    frozen = gc.get_freeze_count()
    gc.collect(1)  # a middle pass: its survivors are frozen too, not left for one long full pass
    assert gc.get_freeze_count() >= frozen + 100 and gc.get_count()[2] == 0, "a middle pass freezes its survivors"
    print("ok", hook.passes)
    """
)


def test_full_passes_freeze_survivors_and_every_nth_thaws() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok ")
