"""How late a renewed value may reach a container, and what that asks of ttl and renewBefore.

Values are delivered as Secret volumes, and the kubelet, not agentcred, decides when a
changed Secret reaches the container: it rewrites the volume at the pod's next sync, every
`syncFrequency` plus up to half of it again (jitter). With the kubelet's defaults (1m) that is
up to 90 s. Measured on a real node (bench/stages/kubelet_delay.py, 51 renewals each): p50 53.9 s,
p99 85.2 s with the defaults; p50 6.0 s, p99 14.5 s with `syncFrequency: 10s`. A renewal
written later than that before expiry lets the old value expire inside the container while
the new one waits in the API.

So the operator is told how late a volume refresh may come (`--volume-refresh-delay`, default
95 s: 1.5 x the kubelet's default syncFrequency, plus 5 s), and then:
- renews at least that long before expiry, whatever `renewBefore` says;
- refuses a credential whose ttl is shorter than twice that (a value would spend as long
  waiting to reach the container as it could be used there, or expire on the way).
"""

from __future__ import annotations

import datetime as dt

from ..api.model import AgentCredentialSpec

DEFAULT_VOLUME_REFRESH_DELAY = dt.timedelta(seconds=95)


def renew_before(spec: AgentCredentialSpec, refresh_delay: dt.timedelta) -> dt.timedelta:
    """How long before expiry a value is renewed: renewBefore (default a third of ttl), and
    never less than the kubelet may take to deliver it -- unless agentcred's CSI node plugin
    delivers it: the plugin writes the file itself, at once, so no kubelet period applies."""
    if spec.projection.delivery == "csi":
        return spec.renew_before_delta
    return max(spec.renew_before_delta, refresh_delay)


def shown(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds}s" if minutes and seconds else f"{minutes}m" if minutes else f"{seconds}s"


def ttl_problem(spec: AgentCredentialSpec, refresh_delay: dt.timedelta) -> str | None:
    """Why this ttl cannot be delivered safely by kubelets that refresh volumes this late (a
    gateway-only credential is never in a volume, and a CSI-delivered one is written by
    agentcred's plugin, not refreshed by the kubelet: neither has such a bound)."""
    if not refresh_delay or spec.ttl_delta >= 2 * refresh_delay or spec.projection.delivery != "secret":
        return None
    return (
        f"ttl {spec.ttl} is too short for values delivered as Secret volumes: a kubelet may take up to "
        f"{shown(refresh_delay)} to put a renewed value into the container (the operator's volume refresh "
        f"delay, set from the kubelets' syncFrequency), so a value must live at least {shown(2 * refresh_delay)} "
        "(twice that) to reach the container before the one it replaces expires"
    )
