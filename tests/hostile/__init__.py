"""Issue #12: one test module per hostile-input item (see each module's docstring)."""
