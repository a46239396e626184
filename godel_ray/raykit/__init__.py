"""The only package that imports ``ray``: attach/init, actor creation, error mapping, metrics, heads."""
