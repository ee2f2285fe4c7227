"""The operator's doors: the HTTPS endpoints (token service, JWKS, leak intake), the admission
webhook, health and metrics.
"""
