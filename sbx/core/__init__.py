"""The domain: sandbox lifecycle, validation rules, errors and the service
that ties the store to the node agent."""
