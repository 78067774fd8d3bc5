"""Notifications: tells customers what happened to their orders."""
