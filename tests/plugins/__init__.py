"""A training objective and a ranking metric added from outside deepcf (tests/test_plugins.py)."""
