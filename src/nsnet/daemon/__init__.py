"""The long-running engine process: API server, process watcher, reconcile (and later DNS, overlay)."""
