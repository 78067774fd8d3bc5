"""Notifications: tells customers by email what became of their orders.

Its handlers are durable (an email must not be lost to a crash) and retried when the mail
server defers them; an email whose template is missing cannot succeed by retrying, so it
goes to the dead letters at once, to be replayed once the template is in place.
"""
