"""Whether a process of this machine is alive, for leftovers of writers that were killed."""
import os


def process_alive(pid: int) -> bool:
    """``kill(pid, 0)``: False once the process has ended; a live process of another user counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
