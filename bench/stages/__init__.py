"""The benchmark's stages, one module per thing measured. Each exposes `run(ctx, ...) -> dict`
(the figures, JSON-ready), is listed once in `bench/__main__.py`'s stage list, and cleans up
what it made (namespaces deleted and waited for) so no later stage pays for it.

A hot path measured beside its floor (gateway decisions now; DPoP issuance and CSI publishing
next) returns `{"paths": [...]}` of `bench.hot_paths.Point`s, which the report renders in one
table and one plot for every such stage (see `bench/hot_paths.py`).
"""
