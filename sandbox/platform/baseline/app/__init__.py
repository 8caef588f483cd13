"""The platform's API server: leads, appointments and branches of multi-tenant businesses."""
