"""What the operator says about each credential: counts, the batched status writer, minting-service
health.
"""
