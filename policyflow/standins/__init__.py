"""Loopback HTTP stand-ins for the Kubernetes API and the Testkube API (test bed and demo)."""
