"""The C side of cyjob.hash: the pickler's ``persistent_id`` filter.

CPython's C pickler handles dicts, sets and frozensets itself (no
``reducer_override`` for builtin containers), so the only hook that sees
every object is ``persistent_id``, called once per object.  Called from C on
a list of 100,000 ints, a Python-level hook costs more than the pickling;
this filter answers "nothing to do" for atoms, lists and tuples in a few
nanoseconds and hands every other object to the Python rule
(``cyjob.cache.hashing._canonical_pid``).
"""


cdef class PidFilter:
    """``persistent_id`` for the hashing pickler: None (pickle as usual) for
    atoms, lists and tuples, else whatever ``rule(obj)`` says."""

    cdef object rule

    def __init__(self, rule):
        self.rule = rule

    def __call__(self, obj):
        cdef type kind = type(obj)
        if (kind is int or kind is str or kind is float or kind is tuple
                or kind is list or kind is bytes or kind is bool
                or obj is None or kind is complex):
            return None
        return self.rule(obj)


cdef bint _plain(object obj, int depth) except -1:
    cdef type kind = type(obj)
    if (kind is int or kind is str or kind is float or kind is bytes
            or kind is bool or obj is None or kind is complex):
        return True
    if depth > 64:  # deep (or cyclic): let the filtered pickler decide
        return False
    if kind is list:
        for item in <list>obj:
            if not _plain(item, depth + 1):
                return False
        return True
    if kind is tuple:
        for item in <tuple>obj:
            if not _plain(item, depth + 1):
                return False
        return True
    return False


def is_plain(obj):
    """True if ``obj`` is made of atoms, lists and tuples only: then the
    filter would answer None for every object and the pickler can run
    without it (same bytes, no call per object)."""
    return _plain(obj, 0)
