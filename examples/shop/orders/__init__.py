"""Orders: takes orders and follows their fate through the other modules' events."""
