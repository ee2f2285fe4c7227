"""A pod's projection from admission to revocation: the pod watch, the reconciler, the one
revocation sequence, credential lifecycle, take-over.
"""
