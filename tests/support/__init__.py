"""Helpers shared by the tests: the cluster and the operator process, agents, fakes."""
