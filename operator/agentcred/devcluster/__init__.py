"""A real Kubernetes control plane on loopback, for development, the demo and the tests.

Built from the published Go modules (`binaries`), started on free loopback ports with
generated certificates (`pki`, `controlplane`), with a stand-in kubelet (`kubelet`).
"""
