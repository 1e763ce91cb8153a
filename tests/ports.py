"""Ports for the servers the tests start (appliances, Ray nodes, PostgreSQL)."""

from __future__ import annotations


def free_port() -> int:
    """A port that nothing listens on now, from appliance.runtime.LISTEN_PORTS: clear of Ray's worker and
    direct-ingress ports and of the kernel's ephemeral range, so no outgoing connection takes it before
    the server binds it (or binds it again: HAProxy on restart). A server that still finds it taken
    fails clearly (start_appliance raises PortInUse, and the session fixture retries)."""
    from appliance.runtime import free_listen_port  # here: a GPU check host runs tests without the appliance

    return free_listen_port()
