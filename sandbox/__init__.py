"""The sandbox platform: a faithful, runnable stand-in for the protected SaaS API."""
