"""Helpers shared by the tests: tiny models, generated data, launchers. Not collected as tests."""
