"""Redis / Valkey: connections, key names, the job queue, and the embedded server for ``smith dev``."""
