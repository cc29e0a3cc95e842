"""policyflow: new Kyverno PolicyReport failures -> Testkube runs -> outcomes on the report."""
