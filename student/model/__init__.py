"""The SAK student network: config, stem + adapter paths + routers + heads, parameter counts, export, files."""
