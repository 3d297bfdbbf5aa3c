"""copbridge."""
