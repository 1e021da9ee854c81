"""
How much memory a run may still take, for train.py's `in_memory` and `cache_teacher` = auto, and the decision
line they print.

    keep, line = memory_decision("in_memory", "the training images", n_bytes, device)

The rule: something is kept in memory when it takes at most half of the memory available now on the device it
would live on, the other half being left for the training step and everything else. Available is, on a CUDA
device, its free memory (torch.cuda.mem_get_info); on the CPU, /proc/meminfo's MemAvailable (what can be
allocated without swapping, the page cache counted as free), no more than a cgroup memory limit leaves (a
container, a Slurm job), divided by the processes torchrun started on this machine (LOCAL_WORLD_SIZE).
"""

import os

import torch

FRACTION = 0.5


def cgroup_room():
    """Bytes a cgroup v2 memory limit still leaves this process, or None without a limit."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            current = int(f.read())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - current)


def available_memory(device):
    """Bytes this process can still allocate on `device` (a torch.device), as the module docstring says."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        available = int(fields["MemAvailable"].split()[0]) * 1024  # kB
    except (OSError, KeyError, ValueError):  # not Linux: the physical memory, a loose bound
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    room = cgroup_room()
    if room is not None:
        available = min(available, room)
    return available // int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def memory_decision(setting, what, n_bytes, device):
    """(keep in memory?, the line that says why) for `what`, which takes n_bytes on device under setting=auto."""
    available = available_memory(device)
    keep = n_bytes <= FRACTION * available
    return keep, (f"{setting}=auto: {what} take {n_bytes / 2**30:.2f} GiB, {'at most' if keep else 'more than'} half of "
                  f"the {available / 2**30:.2f} GiB available on {device}")
