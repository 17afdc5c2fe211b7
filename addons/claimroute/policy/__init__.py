"""The policy: its model (data only), RBAC and routes (model and parsing), loading."""
