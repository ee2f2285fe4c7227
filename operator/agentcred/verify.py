"""agentcred's public verifier: what a gateway or an MCP server imports to check a token.

Everything else in the package is internal and may change between releases; this module's
names are the contract.

    from agentcred.verify import Intent, TokenRejected, Verifier

    verifier = Verifier.from_url("https://agentcred.agentcred.svc:8443", cafile="ca.crt")
    try:
        claims = verifier.verify(
            token,
            audience="https://llm-gateway.agents.svc",
            namespace="agents",  # the tenant this gateway serves
            intent=Intent("web-search", "read", "repo:acme/app"),
        )
    except TokenRejected as refused:
        print(refused.reason)  # stable for programs: "expired", "revoked", "out-of-scope", ...

A DPoP-bound token (RFC 9449) is verified with the request it came with:

    claims = verifier.verify(token, audience=..., namespace="agents",
                             presented=Presented("POST", "https://tools.agents.svc/mcp",
                                                 scheme="DPoP", proof=request.headers["DPoP"]))
"""

from __future__ import annotations

from .client.verify import Presented, TokenRejected, Verifier, describe_grant, revocation_list
from .rules.scope import Intent

__all__ = ["Intent", "Presented", "TokenRejected", "Verifier", "describe_grant", "revocation_list"]
