"""Request and response bodies, one module per resource (beside api/routes), and those shared by
several in common. Secrets appear only in the *Created bodies, once."""
