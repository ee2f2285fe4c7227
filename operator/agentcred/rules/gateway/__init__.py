"""Deciding gateways' calls, pure: a request in, the intent, the credential and a verdict out."""
