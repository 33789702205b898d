"""The app: logins, negotiation, credentials and the baseline; never holds the master key."""
