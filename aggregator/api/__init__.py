"""The HTTP edge: app factory, dependencies, error mapping and one router per resource."""
