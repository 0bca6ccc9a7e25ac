"""The trivial remote action Mitogen calls on each host; Mitogen ships this module there, so no imports."""


def answer() -> int:
    return 1
