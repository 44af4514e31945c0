"""Test fixtures for the ingest side (registered in tests/conftest.py)."""
