"""A container's exit status in words: what an operator reads in REASON and the logs.

A process killed by signal N exits 128 + N as the container's status (Docker's and every
shell's convention), so 137 is SIGKILL, which on a GPU host is nearly always the kernel's OOM
killer; Docker says so for certain only when its own memory limit killed the container (the
`oom` event, `OOMKilled` in inspect). The few codes Docker itself uses (125-127) are named too.
"""

from __future__ import annotations

import signal

_SIGNAL_NOTES = {
    signal.SIGTERM: "asked to stop",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGABRT: "aborted",
    signal.SIGBUS: "bus error",
    signal.SIGILL: "illegal instruction",
    signal.SIGFPE: "floating-point exception",
    signal.SIGINT: "interrupted",
    signal.SIGHUP: "hung up",
}
_DOCKER_CODES = {
    125: "Docker could not run the container",
    126: "its command cannot be executed (permissions, or not a program)",
    127: "its command was not found in the image",
}


def describe_exit(code: int | None, *, oom_killed: bool | None = None) -> str:
    """E.g. "container exited with code 137: killed by SIGKILL — out of memory".

    `oom_killed`: True when Docker reports the container OOM-killed, False when it was asked
    and says not, None when it is not known (the wording then says what is likely)."""
    if code is None:
        return "container exited (exit code unknown)" + (
            ": killed — out of memory (Docker reports it OOM-killed)" if oom_killed else ""
        )
    head = f"container exited with code {code}"
    if oom_killed:
        return (
            f"{head}: killed by SIGKILL — out of memory (Docker reports it OOM-killed: raise "
            'the entry\'s "memory" or lower what the model holds)'
        )
    if code in _DOCKER_CODES:
        return f"{head}: {_DOCKER_CODES[code]}"
    number = code - 128
    if 0 < number < 65:
        try:
            sig = signal.Signals(number)
        except ValueError:
            return f"{head}: killed by signal {number}"
        note = _SIGNAL_NOTES.get(sig)
        text = f"{head}: killed by {sig.name}" + (f" ({note})" if note else "")
        if sig is signal.SIGKILL:
            text += (
                " — not Docker's memory limit; the host's OOM killer or a `docker kill`?"
                if oom_killed is False
                else " — likely out of memory (the kernel's OOM killer), or a `docker kill`"
            )
        return text
    return head
