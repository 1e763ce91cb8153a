"""Cross-cutting pieces every router and service uses: settings, database, errors, ids, paths."""
