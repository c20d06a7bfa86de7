"""The control plane: GitHub webhooks in, a durable job queue, the agent API and the operator API."""
