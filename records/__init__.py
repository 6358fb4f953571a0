"""Where the platform's records are opened and changed: one module per aggregate, called by the API's
routes and by activities alike, so a rule about a record (which revisions served, which are under way,
who hears of a change) is written once. Each function runs inside its caller's transaction."""
