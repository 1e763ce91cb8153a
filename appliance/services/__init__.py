"""The work behind the routes, one module per capability. Routes call these; tests may too."""
