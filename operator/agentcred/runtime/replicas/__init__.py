"""What replicas share and elect: leadership, the key ring, the revocation list's storage, the
serving certificate.
"""
