"""One client per external system; each returns typed results and raises typed errors."""
