"""Unit tests: a package, so a file may share its name with the integration test of the same module
(tests/unit/test_token_service.py beside tests/integration/tokens/test_token_service.py)."""
