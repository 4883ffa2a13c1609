"""Experiments of the paper that compare several losses at once (each a pure-torch function
returning a JSON-able report and figures)."""
