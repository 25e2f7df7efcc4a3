"""Server side of client-level DP and secure aggregation: `dp_aggregation`, `privacy_budget`, `secagg_protocol`, `secagg_aggregation`."""
