"""What keeps one site's update from steering a round: the norm bound and sample caps (`safeguards`) and the direction check against the round's median update (`direction_guard`)."""
