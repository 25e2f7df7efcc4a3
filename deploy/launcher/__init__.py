"""`fedseg demo|simulate|deploy`: a whole federation on one machine (processes, network namespaces) and its report."""
