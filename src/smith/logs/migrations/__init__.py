"""SQL migrations of the log store, applied in file-name order at start-up (see ``smith.logs.store``)."""
