"""Real HTTP servers the tests start on 127.0.0.1 (no mocks of the HTTP layer)."""
