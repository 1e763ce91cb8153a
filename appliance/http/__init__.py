"""HTTP plumbing: token auth, the response envelope and error handlers, route dependencies."""
