"""Leak response: tracing a value to where it lives, revoking every copy, the authenticated intake."""
