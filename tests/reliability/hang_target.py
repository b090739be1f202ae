"""A TimeoutPool target (imported in fresh worker processes: standard library only)."""


def hang_item(item):
    """Never returns for item "hang" (a reward stuck in C code would look the same to the pool)."""
    if item == "hang":
        while True:
            pass
    return len(item)
