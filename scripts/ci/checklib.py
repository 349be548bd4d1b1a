"""What the check scripts share: one line per check, a tally of passes and failures, and the
summary that ends a run (exit 1 when anything failed)."""

import sys

failures = []
passed = [0]


def fail(msg):
    failures.append(msg)
    print(f"  FAIL {msg}")


def ok(msg):
    passed[0] += 1
    print(f"  ok   {msg}")


def note(msg):
    print(f"  note {msg}")


def section(title):
    print(f"==> {title}")


def finish(name):
    """Print the failures (first line of each) and the counts; exit 1 when any failed."""
    if failures:
        print(f"\n{len(failures)} check(s) failed:")
        for f in failures:
            print(f"  - {f.splitlines()[0]}")
    print(f"\n{name}: {passed[0]} passed, {len(failures)} failed")
    if failures:
        sys.exit(1)
