import datetime as dt

from cryptography import x509

from agentcred.platform import pki
from agentcred.runtime.replicas.serving_certificate import certificate_actions, new_serving_certificate

NOW = dt.datetime.now(dt.timezone.utc)


def _certificates(bundle: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(bundle)


def test_renewal_keeps_the_previous_ca_in_the_bundle() -> None:
    first = new_serving_certificate("agentcred", "agentcred")
    second = new_serving_certificate("agentcred", "agentcred", previous_ca=first.ca_pem)
    third = new_serving_certificate("agentcred", "agentcred", previous_ca=second.ca_pem)
    assert len(_certificates(second.ca_pem)) == 2 and len(_certificates(third.ca_pem)) == 2  # never grows
    assert _certificates(second.ca_pem)[1] == _certificates(first.ca_pem)[0]
    leaf = x509.load_pem_x509_certificate(second.cert_pem)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "agentcred.agentcred.svc" in names.get_values_for_type(x509.DNSName)


def test_the_leader_renews_30_days_ahead_and_old_replicas_ask_for_a_restart_7_days_ahead() -> None:
    fresh = new_serving_certificate("s", "ns")
    expiring = new_serving_certificate("s", "ns", validity=dt.timedelta(days=20))
    dying = new_serving_certificate("s", "ns", validity=dt.timedelta(days=3))
    assert certificate_actions(fresh, fresh, leading=True, now=NOW) == (False, False)
    assert certificate_actions(expiring, expiring, leading=True, now=NOW) == (True, False)
    assert certificate_actions(expiring, expiring, leading=False, now=NOW) == (False, False)
    assert certificate_actions(fresh, dying, leading=False, now=NOW) == (False, True)  # renewed one is ready
    assert certificate_actions(dying, dying, leading=False, now=NOW) == (False, False)  # nothing newer to load
    assert pki.expires_within(dying.cert_pem, dt.timedelta(days=7), NOW)
