"""What talks to the Kubernetes API through the official client, shared by the agent and the
extender: keeping a local copy of a list of objects up to date (`Reflector`)."""
