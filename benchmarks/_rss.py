"""Peak resident memory of this process, for the memory benchmarks (not a benchmark).

``getrusage(RUSAGE_SELF).ru_maxrss`` is the wrong number for a freshly started child:
Linux carries the peak of the process it was forked from across ``exec`` (measured: a
child of a 1.2 GB parent reported 1.14 GB while its own peak was 11 MB), so a benchmark
that prepares data in the parent and measures in a child would count the parent.
``VmHWM`` in ``/proc/self/status`` belongs to this process's address space alone.
"""

import resource


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (``VmHWM``; ``ru_maxrss`` where /proc is absent)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0   # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # KiB on Linux
