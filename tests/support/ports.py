"""Loopback ports: a free one for a server about to start, or several that stay free a while."""

from __future__ import annotations

import random
import socket

from .errors import SetupError


def free_port() -> int:
    """A port free on 127.0.0.1 now (the kernel's pick; a server should bind it soon)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether ``port`` can be bound on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_open(port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        sock.settimeout(timeout)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def pick_ports(count: int, *, taken: set[int] | None = None) -> list[int]:
    """``count`` distinct free ports, none in ``taken``.

    Drawn below Linux's ephemeral range (32768+), so that outgoing connections do not take them
    between this check and the servers binding them (a server that starts slowly, or a port
    passed on to a process that binds it later).
    """
    rng = random.SystemRandom()
    chosen: list[int] = []
    avoid = set(taken or ())
    for _ in range(1000):
        port = rng.randrange(20000, 32000)
        if port in avoid or port in chosen or not port_is_free(port):
            continue
        chosen.append(port)
        if len(chosen) == count:
            return chosen
    raise SetupError(f"no {count} free loopback ports below 32000")
