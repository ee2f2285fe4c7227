"""The OAuth 2.0 token service and who may call it."""
