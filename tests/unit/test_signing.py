import datetime as dt
import json

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from agentcred.platform.keys import KeyRing, NotOurs, b64url_decode, decode_own, encode_jwt, thumbprint
from agentcred.platform.revocations import ALL_CREDENTIALS, EXPIRY_SKEW, RevocationList, served_key, shard_of
from agentcred.verify import revocation_list

NOW = dt.datetime(2026, 11, 28, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("alg", ["EdDSA", "ES256", "RS256"])
def test_tokens_verify_with_the_public_key_and_name_their_kid(alg: str) -> None:
    ring = KeyRing.generate(NOW)
    key = ring.current(alg)
    token = encode_jwt({"sub": "x", "exp": 1}, key)
    header, payload, signature = token.split(".")
    assert json.loads(b64url_decode(header)) == {"alg": alg, "typ": "at+jwt", "kid": key.kid}
    message = f"{header}.{payload}".encode()
    public = key.private_key.public_key()
    raw = b64url_decode(signature)
    if alg == "EdDSA":
        public.verify(raw, message)
        with pytest.raises(InvalidSignature):
            public.verify(raw, message + b"x")
    elif alg == "RS256":
        public.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
        with pytest.raises(InvalidSignature):
            public.verify(raw, message + b"x", padding.PKCS1v15(), hashes.SHA256())
    else:
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        public.verify(der, message, ec.ECDSA(hashes.SHA256()))


def test_kid_is_the_rfc7638_thumbprint() -> None:
    # The example key of RFC 8037 appendix A.3 and its published thumbprint.
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_key_ring_survives_its_secret_and_publishes_public_keys_only() -> None:
    ring = KeyRing.generate(NOW)
    again = KeyRing.from_secret_data(ring.to_secret_data())
    assert again.jwks() == ring.jwks()
    assert all(set(jwk) <= {"kty", "crv", "x", "y", "n", "e", "kid", "alg", "use"} for jwk in ring.jwks()["keys"])
    assert {jwk["alg"] for jwk in ring.jwks()["keys"]} == {"EdDSA", "ES256", "RS256"}


def test_a_ring_from_an_older_version_gains_the_keys_it_lacks() -> None:
    ring = KeyRing.generate(NOW)
    old = KeyRing(tuple(k for k in ring.keys if k.alg != "RS256"), ring.macs[:1])
    completed = old.completed(NOW)
    assert {k.alg for k in completed.keys} == {"EdDSA", "ES256", "RS256"}
    assert {k.purpose for k in completed.macs} == {"admission", "bookkeeping", "fingerprint", "dpop-nonce"}
    assert completed.keys[:2] == old.keys and completed.completed(NOW) is completed


def test_only_tokens_this_ring_signed_are_decoded_as_its_own() -> None:
    ring, other = KeyRing.generate(NOW), KeyRing.generate(NOW)
    token = encode_jwt({"sub": "x"}, ring.current("RS256"))
    assert decode_own(token, ring)[1] == {"sub": "x"}
    for forged in (encode_jwt({"sub": "x"}, other.current("RS256")), token[:-4] + "AAAA", "a.b", "a.b.c"):
        with pytest.raises(NotOurs):
            decode_own(forged, ring)


def test_revocation_list_is_by_pod_prunes_and_round_trips_through_its_shards() -> None:
    revocations = RevocationList(shards=4)
    revocations.revoke("pod-old", "llm", until=NOW - EXPIRY_SKEW)  # expired even to a lenient verifier
    revocations.revoke("pod-a", "llm", until=NOW + dt.timedelta(minutes=5))
    revocations.revoke("pod-b", ALL_CREDENTIALS, until=NOW + dt.timedelta(minutes=5))
    revocations.revoke("pod-c", "llm", until=NOW + dt.timedelta(hours=1), before=NOW)  # a leaked value replaced
    revocations.prune(NOW)
    assert len(revocations) == 3
    assert revocations.covers("pod-a", "llm", NOW + dt.timedelta(minutes=1))  # every token of it, even later ones
    assert not revocations.covers("pod-a", "search", NOW)
    assert revocations.covers("pod-b", "anything", NOW)
    assert revocations.covers("pod-c", "llm", NOW - dt.timedelta(seconds=1))
    assert not revocations.covers("pod-c", "llm", NOW)  # the fresh value after the leak stands
    again = RevocationList(shards=4)
    for shard in range(4):
        again.merge_shard_data(revocations.shard_data(shard))
    assert again.document() == revocations.document()


def test_each_shard_holds_its_own_pods_entries_and_pruning_keeps_them_so() -> None:
    revocations = RevocationList(shards=4)
    for i in range(40):
        revocations.revoke(f"pod-{i}", "llm", until=NOW + dt.timedelta(minutes=1 + i % 3))
    revocations.revoke_token("pod-0", "llm", "jti-1", until=NOW + dt.timedelta(minutes=1))
    stored = {shard: json.loads(revocations.shard_data(shard)["revoked.json"]) for shard in range(4)}
    for shard, entries in stored.items():
        assert entries and all(shard_of(key.split("/")[0], 4) == shard for key in entries)
    assert sum(len(entries) for entries in stored.values()) == 41
    revocations.dirty.clear()
    revocations.prune(NOW)  # nothing has lapsed: nothing changes, nothing to save
    assert len(revocations) == 41 and not revocations.dirty
    revocations.extend(
        next(e for e in revocations if e.pod_uid == "pod-3" and not e.token_id), NOW + dt.timedelta(hours=1)
    )
    revocations.prune(NOW + dt.timedelta(minutes=1) + EXPIRY_SKEW)  # those of a minute lapse, pod-3's was extended
    left = {e.pod_uid for e in revocations}
    assert "pod-3" in left and "pod-0" not in left and len(revocations) == 27 and revocations.dirty
    stored = {shard: json.loads(revocations.shard_data(shard)["revoked.json"]) for shard in range(4)}
    assert sorted(key.split("/")[0] for entries in stored.values() for key in entries) == sorted(left)
    revocations.prune(NOW + dt.timedelta(hours=2))
    assert len(revocations) == 0 and all(revocations.shard_data(s)["revoked.json"] == "{}" for s in range(4))


def test_the_served_list_blinds_pods_and_credentials_but_verifiers_still_find_them() -> None:
    revocations = RevocationList(shards=2)
    revocations.revoke("5d1c-pod-a", "merger-plans", until=NOW + dt.timedelta(minutes=5))
    revocations.revoke("5d1c-pod-b", ALL_CREDENTIALS, until=NOW + dt.timedelta(minutes=5))
    document = revocations.document()
    assert "5d1c" not in json.dumps(document) and "merger-plans" not in json.dumps(document)
    served = revocation_list(document)
    assert served.covers(*served_key("5d1c-pod-a", "merger-plans"), NOW)
    assert not served.covers(*served_key("5d1c-pod-a", "search"), NOW)
    assert served.covers(*served_key("5d1c-pod-b", "anything"), NOW)
    assert not served.covers(*served_key("5d1c-pod-c", "merger-plans"), NOW)


def test_revocation_lists_merge_as_a_union() -> None:
    ours, theirs = RevocationList(shards=1), RevocationList(shards=1)
    ours.revoke("pod-a", "llm", until=NOW + dt.timedelta(minutes=5), before=NOW)
    theirs.revoke("pod-a", "llm", until=NOW + dt.timedelta(minutes=1))  # an emergency revoke: all tokens
    theirs.revoke("pod-b", "llm", until=NOW + dt.timedelta(minutes=1))
    ours.merge_shard_data(theirs.shard_data(0))
    assert ours.covers("pod-a", "llm", NOW + dt.timedelta(minutes=2)) and ours.covers("pod-b", "llm", NOW)
    assert [e.until for e in ours if e.pod_uid == "pod-a"] == [NOW + dt.timedelta(minutes=5)]


def test_a_token_revoked_by_its_holder_takes_only_its_descendants_along() -> None:
    revocations = RevocationList(shards=2)
    revocations.revoke_token("pod-a", "llm", "jti-1", until=NOW + dt.timedelta(minutes=5))
    assert revocations.covers("pod-a", "llm", NOW, ("jti-1",))
    assert revocations.covers("pod-a", "llm", NOW, ("jti-2", "jti-1"))  # exchanged from it
    assert not revocations.covers("pod-a", "llm", NOW, ("jti-3",))
    assert not revocations.covers("pod-a", "llm", NOW) and not revocations.bars("pod-a", "llm", NOW)
    again = RevocationList(shards=2)
    for shard in range(2):
        again.merge_shard_data(revocations.shard_data(shard))
    assert again.document() == revocations.document()
    assert again.document()["revoked"][0]["jti"] == "jti-1"


def test_the_shared_key_ring_is_parsed_again_only_when_its_keys_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from agentcred.runtime.replicas import keyring as following

    ring, rotated = KeyRing.generate(NOW), KeyRing.generate(NOW)
    secret = {"metadata": {"resourceVersion": "1", "annotations": {}}, "data": ring.to_secret_data()}
    parsed, seen, reads = [], [], []

    class Kube:
        async def read_secret(self, namespace: str, name: str) -> dict:
            reads.append(1)
            if len(seen) == 2:  # an annotation written: a new version, the same keys
                secret["metadata"]["resourceVersion"] = "2"
            if len(seen) == 3:  # another replica rotated the keys
                secret["metadata"]["resourceVersion"], secret["data"] = "3", rotated.to_secret_data()
            if len(seen) == 5 or len(reads) > 10:
                raise asyncio.CancelledError
            return json.loads(json.dumps(secret))

    original = KeyRing.from_secret_data

    def counted(data: dict[str, str]) -> KeyRing:
        parsed.append(1)
        return original(data)

    monkeypatch.setattr(following.KeyRing, "from_secret_data", staticmethod(counted))
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(
            following.maintain_keyring_forever(Kube(), "ns", "keys", ring, seen.append, None, lambda: False, poll=0)
        )
    # The ring loaded at start is not parsed again; the rotated one is, once.
    assert len(seen) == 5 and len(parsed) == 1 and all(s is ring for s in seen[:3])
    assert seen[3] is seen[4] and seen[3].keys[0].kid == rotated.keys[0].kid
