"""Reading policy files: YAML with a line table, typed readers, strict JSON."""
