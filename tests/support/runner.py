"""Test fixtures for the runner side (registered in tests/conftest.py)."""
