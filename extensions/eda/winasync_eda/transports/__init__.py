"""Transports fetch a host's async dir; see ``base`` for what they return."""
