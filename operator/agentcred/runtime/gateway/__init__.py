"""Deciding gateways' calls: Envoy's ext_authz over gRPC and HTTP forward-auth."""
