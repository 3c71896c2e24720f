"""collector: a fleet of stateless daemons that keep users' data in sync from third-party APIs."""
