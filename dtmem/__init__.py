"""dtmem."""
