"""Test fixtures for the simulator side (registered in tests/conftest.py)."""
